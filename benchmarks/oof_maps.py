"""Out-of-fold IDC maps of the whole patients against their ground truth, per map rule.

    python benchmarks/oof_maps.py BUNDLE_OR_RUN_DIR [--min-areas 0 0.1 0.2 0.4] [--json OUT]

A cross-validated bundle stores every patient's out-of-fold scores (each patient scored by the fold
model that did not train on it, calibrated and thresholded with values fitted on the other folds).
For the whole patients (``idc/patients``: every patch of the slide, so the scores form the slide's
map on its 50-px grid, the grid ``idcmap score`` uses on the rebuilt slide), this builds the map's
IDC calls under each minimum region area (:func:`idcmap.jobs.render.summaries.idc_mask`; 0: every patch at or
above the threshold) and scores them against the labels: Dice per patient, mean and median, and
the mean over the patients with the least IDC (where isolated false positives weigh most).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from bench_ensemble import out_of_fold

from idcmap.jobs.render.summaries import idc_mask, patches_for_area
from idcmap.model.crossval import cross_fitted, oof_grid

ROOT = Path(__file__).resolve().parents[1]

PATCH_MM2 = (50 * 4.0 / 1000) ** 2  # one 50-px patch at 4.0 µm/px


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


def patient_maps(oof: pd.DataFrame, prob, thr):
    """Per whole patient: (probability grid, NaN off tissue; label grid; threshold; fold)."""
    out, (rows, cols, _) = {}, oof_grid(oof)
    for p in sorted(oof.loc[oof.source == "patients", "patient_id"].unique()):
        m = (oof.patient_id == p).to_numpy()
        row, col = rows[m], cols[m]
        grid = np.full((row.max() + 1, col.max() + 1), np.nan, np.float32)
        grid[row, col] = prob[m]
        labels = np.zeros(grid.shape, bool)
        labels[row, col] = oof.label.to_numpy()[m] == 1
        out[p] = (grid, labels, float(thr[m][0]), int(oof.fold.to_numpy()[m][0]))
    return out


def min_patches(min_area_mm2: float) -> int:
    return patches_for_area(min_area_mm2, PATCH_MM2)


def map_dice(maps: dict, min_area_mm2: float) -> dict[str, float]:
    """Dice of each whole patient's map calls against its labels (off-tissue cells are neither)."""
    return {p: dice(idc_mask(g, t, min_patches(min_area_mm2)), lab) for p, (g, lab, t, _) in maps.items()}


def idc_shares(oof: pd.DataFrame) -> pd.Series:
    """Each whole patient's IDC share, least first."""
    return oof[oof.source == "patients"].groupby("patient_id").label.mean().sort_values()


def summarise(d: dict[str, float], shares: pd.Series, n: int = 3) -> dict[str, float]:
    """Mean and median of per-patient map Dice ``d``, and its mean over the ``n`` patients with the
    least and the ``n`` with the most IDC (where false positives, and missed IDC, weigh most)."""
    v = np.array(list(d.values()))
    return {
        "mean": float(v.mean()),
        "median": float(np.median(v)),
        "least_idc_mean": float(np.mean([d[p] for p in shares.index[:n]])),
        "most_idc_mean": float(np.mean([d[p] for p in shares.index[-n:]])),
    }


def dice_summary(oof: pd.DataFrame, prob, thr, min_area_mm2: float, n: int = 3) -> dict[str, float]:
    """:func:`summarise` of the whole patients' map Dice with probabilities ``prob``, thresholds ``thr``."""
    return summarise(map_dice(patient_maps(oof, prob, thr), min_area_mm2), idc_shares(oof), n)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", type=Path, help="a cross-validated bundle, or its training run (--run-dir)")
    ap.add_argument("--min-areas", type=float, nargs="+", default=[0.0, 0.1, 0.2, 0.4])
    ap.add_argument("--least-idc", type=int, default=3, help="patients with the least IDC, averaged apart")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    oof = out_of_fold(args.source)
    prob, thr, _ = cross_fitted(oof)
    maps = patient_maps(oof, prob, thr)
    idc_share = idc_shares(oof)
    least = list(idc_share.index[: args.least_idc])
    results = {}
    for area in args.min_areas:
        d = map_dice(maps, area)
        results[area] = {"per_patient": d, **summarise(d, idc_share, args.least_idc)}
    print(f"{len(idc_share)} whole patients; least IDC: " + ", ".join(f"{p} ({idc_share[p]:.1%})" for p in least))
    print("\n| minimum region area | patches | mean Dice | median Dice | mean Dice, least-IDC patients |")
    print("|---|---|---|---|---|")
    for area, r in results.items():
        print(
            f"| {area:g} mm² | {min_patches(area)} | {r['mean']:.3f} | {r['median']:.3f} | {r['least_idc_mean']:.3f} |"
        )
    print("\n| patient | IDC share | " + " | ".join(f"Dice, {a:g} mm²" for a in results) + " |")
    print("|---|---|" + "---|" * len(results))
    for p in idc_share.index:
        dices = " | ".join(f"{r['per_patient'][p]:.3f}" for r in results.values())
        print(f"| {p} | {idc_share[p]:.1%} | {dices} |")
    if args.json:
        args.json.write_text(json.dumps({str(a): r for a, r in results.items()}, indent=1))


if __name__ == "__main__":
    main()
