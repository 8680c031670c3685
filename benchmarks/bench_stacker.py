"""Would a learned post-network step beat the designed one? A probe on stored out-of-fold scores.

    python benchmarks/bench_stacker.py RUN_DIR... [--json OUT]

The shipped steps after the network (neighbour context, slide baseline, temperature, threshold) were
designed by hand on out-of-fold scores and only their weights are chosen inside the folds. This
replaces all of them with a logistic regression on features of each patch's raw logit on its
patient's 50-px grid: its own logit; the mean, max and min of its scored 8-neighbours' logits (its
own where it has none) and their count / 8; the mean of the scored 5x5 ring outside them; and its
patient's 10th, 50th and 90th percentile of logits (patients of fewer than 10 patches: the fitting
patients' medians of those). Each outer fold's regression and balanced-accuracy threshold are
fitted on the *other* folds' out-of-fold rows, as :func:`~model.crossval.cross_fitted` fits the
shipped steps, and the held fold is scored with them. Reported beside the shipped steps on the same
scores: pooled ROC AUC (with the 95 % interval of the change over resampled patients), balanced
accuracy, ECE and the whole patients' mean map Dice at 0.2 mm². Nothing is trained or scored by a
network.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from bench_ensemble import difference_interval, out_of_fold
from oof_maps import map_dice, patient_maps
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from idcmap.model.calibration import choose_threshold
from idcmap.model.crossval import cross_fitted, oof_grid
from idcmap.model.metrics import classification_metrics

QUANTILES = (0.1, 0.5, 0.9)
MIN_PATCHES = 10


def grid_features(z: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """(N, 6) per patch of one patient: own logit, 8-neighbour mean / max / min / count share and
    the 5x5 ring's mean (own logit where no neighbour is scored)."""
    r, c = rows - rows.min() + 2, cols - cols.min() + 2
    shape = (r.max() + 3, c.max() + 3)
    val = np.full(shape, np.nan)
    val[r, c] = z
    near = [(dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1) if (dr, dc) != (0, 0)]
    ring = [(dr, dc) for dr in range(-2, 3) for dc in range(-2, 3) if max(abs(dr), abs(dc)) == 2]

    def stack(offsets):
        return np.stack([val[r + dr, c + dc] for dr, dc in offsets], axis=1)

    n8, n16 = stack(near), stack(ring)
    count = np.isfinite(n8).sum(axis=1)
    with warnings.catch_warnings():  # all-NaN rows (no scored neighbour) are filled below
        warnings.simplefilter("ignore", RuntimeWarning)
        feats = [z, np.nanmean(n8, 1), np.nanmax(n8, 1), np.nanmin(n8, 1), count / 8.0, np.nanmean(n16, 1)]
    out = np.stack(feats, axis=1)
    return np.where(np.isfinite(out), out, z[:, None])


def features(oof: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(per-patch grid features, per-patch patient quantiles: NaN for patients of < 10 patches)."""
    z = oof["logit"].to_numpy(np.float64)
    rows, cols, _ = oof_grid(oof)
    grid, quant = np.zeros((len(z), 6)), np.full((len(z), len(QUANTILES)), np.nan)
    for idx in oof.groupby("patient_id").indices.values():
        grid[idx] = grid_features(z[idx], rows[idx], cols[idx])
        if len(idx) >= MIN_PATCHES:
            quant[idx] = np.quantile(z[idx], QUANTILES)
    return grid, quant


def stacked(oof: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(probability, threshold per patch), each fold's model fitted on the other folds."""
    y, fold = oof["label"].to_numpy(), oof["fold"].to_numpy()
    grid, quant = features(oof)
    prob, thr = np.zeros(len(oof)), np.zeros(len(oof))
    for f in np.unique(fold):
        mine = fold == f
        fill = np.nanmedian(quant[~mine], axis=0)
        x = np.hstack([grid, np.where(np.isnan(quant), fill, quant)])
        model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000))
        model.fit(x[~mine], y[~mine])
        p = model.predict_proba(x)[:, 1]
        prob[mine], thr[mine] = p[mine], choose_threshold(p[~mine], y[~mine])
    return prob, thr


def compare(oof: pd.DataFrame) -> dict:
    y, patients = oof["label"].to_numpy(), oof["patient_id"].to_numpy()
    out, probs = {}, {}
    for name, (prob, thr) in (("shipped", cross_fitted(oof)[:2]), ("stacker", stacked(oof))):
        m = classification_metrics(y, prob, thr)
        dices = map_dice(patient_maps(oof, prob, thr), 0.2)
        out[name] = {k: m[k] for k in ("roc_auc", "balanced_accuracy", "ece")} | {
            "map_dice_mean": float(np.mean(list(dices.values()))),
            "map_dice": dices,
        }
        probs[name] = prob
    out["roc_auc_change_95"] = difference_interval(y, probs["shipped"], probs["stacker"], patients)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dirs", nargs="+", type=Path)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    print("| run | steps | ROC AUC | balanced acc. | ECE | mean map Dice | ROC AUC change, 95 % |")
    print("|---" * 7 + "|")
    result = {}
    for run in args.run_dirs:
        r = result[str(run)] = compare(out_of_fold(run))
        lo, hi = r["roc_auc_change_95"]
        for name in ("shipped", "stacker"):
            m = r[name]
            change = f"{lo:+.4f} to {hi:+.4f}" if name == "stacker" else ""
            print(
                f"| {run.name} | {name} | {m['roc_auc']:.4f} | {m['balanced_accuracy']:.4f} | {m['ece']:.4f} | "
                f"{m['map_dice_mean']:.3f} | {change} |",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
