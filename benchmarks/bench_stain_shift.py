"""Out-of-fold patients re-stained: do the ranking, the threshold and the calibration hold?

    python benchmarks/bench_stain_shift.py RUN_DIR [--json OUT] [--plot OUT.png] [--quick]

RUN_DIR is a cross-validated training run (``idcmap train --folds K --run-dir RUN_DIR``): each
``fold-N/`` holds the fold's model and its out-of-fold scores. Every fold's held-out patients are
re-stained and scored again by the fold model that never saw them; calibration and threshold are
each fold's cross-fitted ones (fitted on the other folds' unshifted scores), as in the bundle's
out-of-fold figures. Shifts: haematoxylin and eosin optical density scaled independently (0.5 to
1.5, Ruifrok-Johnston deconvolution), each patient re-drawn with another patient's Macenko stain
vectors and concentration scale, fading towards white, hue rotation, JPEG quality 50.

Under each shift it also reports the whole patients' map Dice (``oof_maps.dice_summary``). It plots
each out-of-fold patient's ROC AUC and sensitivity against its mean optical density
(pale patients on the left).

``--normalise`` measures stain normalisation at scoring time on the same models: each patient's
(shifted) patches are re-drawn by Macenko with the median stain vectors of its fold model's
training patients before they are scored. A run trained on normalised patches
(``idcmap train --stain-normalise``) has each patient's shifted patches normalised as in its
training (Macenko, fitted on the patient's own patches, to the fixed reference) and adds the
IDC-proportion check: each patient's patches (>= 10 of each class) split into IDC-rich and IDC-poor halves,
each half normalised alone, against the patient normalised whole.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from oof_maps import dice_summary

from idcmap.jobs.render.summaries import DEFAULT_MIN_IDC_AREA_MM2
from idcmap.model import data as datalib
from idcmap.model.architectures import CONTEXT_ARCHS
from idcmap.model.crossval import (
    PER_PATIENT_MIN,
    context_logits,
    cross_fitted,
    oof_grid,
    per_patient_table,
)
from idcmap.model.make_bundle import FOLD_INFO, FOLD_MODEL, FOLD_OOF, predict_batches
from idcmap.model.metrics import classification_metrics
from idcmap.model.scoring import idc_logit, scoring_function, sigmoid
from idcmap.model.stain import (
    StainFitError,
    StainVectors,
    macenko,
    normalise_groups,
    optical_density,
    restain,
    transfer,
)

ROOT = Path(__file__).resolve().parents[1]

DATA = [ROOT.parent / "shared" / "data" / "idc" / "patients", ROOT.parent / "shared" / "data" / "idc" / "sparse"]


def _fade(x, amount):
    return np.rint(x + amount * (255.0 - x)).astype(np.uint8)


def _hue(x, degrees):
    hsv = cv2.cvtColor(x.reshape(-1, 50, 3), cv2.COLOR_RGB2HSV)
    hsv[..., 0] = (hsv[..., 0].astype(np.int32) + int(round(degrees / 2))) % 180
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB).reshape(x.shape)


def _jpeg(x, quality):
    out = np.empty_like(x)
    for i, im in enumerate(x):
        ok, buf = cv2.imencode(".jpg", im[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
        out[i] = cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]
    return out


def _vectors_of(images, patient_ids):
    """Each patient's Macenko stains (None where too few stained pixels)."""
    out = {}
    for p in np.unique(patient_ids):
        try:
            out[p] = macenko(images[patient_ids == p])
        except StainFitError:
            out[p] = None
    return out


def _reference(vectors, patients) -> StainVectors:
    """The median stains of ``patients`` (those with vectors)."""
    vs = [vectors[p] for p in patients if vectors.get(p) is not None]
    return StainVectors(
        tuple(np.median([v.h for v in vs], 0)),
        tuple(np.median([v.e for v in vs], 0)),
        float(np.median([v.max_h for v in vs])),
        float(np.median([v.max_e for v in vs])),
    )


def _normalised(images, patient_ids, reference=None):
    """Each patient's patches re-drawn with ``reference``'s stains (default: the fixed reference
    of ``idcmap train --stain-normalise``)."""
    return normalise_groups(images, patient_ids, *([reference] if reference else []))[0]


def _halves(labels, patient_ids, seed: int = 0):
    """Each patient with >= PER_PATIENT_MIN patches of each class split in two halves of equal
    size: one with as much IDC as it can hold, one with the rest. Group label per patch: 'P:rich'
    or 'P:poor' ('' for patients left out)."""
    rng = np.random.default_rng(seed)
    group = np.full(len(labels), "", object)
    for p in np.unique(patient_ids):
        idx = np.flatnonzero(patient_ids == p)
        if min(labels[idx].sum(), (1 - labels[idx]).sum()) < PER_PATIENT_MIN:
            continue
        idx = idx[np.lexsort((rng.random(len(idx)), -labels[idx]))]  # IDC first, random within
        group[idx[: len(idx) // 2]], group[idx[len(idx) // 2 :]] = f"{p}:rich", f"{p}:poor"
    return group.astype(str)


def _transferred(images, patient_ids, vectors):
    """Each patient's patches re-drawn with the stains of the patient two places on (by id)."""
    ids = sorted(p for p, v in vectors.items() if v is not None)
    donor = dict(zip(ids, ids[2:] + ids[:2]))
    out = images.copy()
    for p, d in donor.items():
        m = patient_ids == p
        out[m] = transfer(images[m], vectors[p], vectors[d])
    return out


def with_transfer(patient_ids, vectors) -> dict:
    """``SHIFTS`` and ``OTHER_STAINS``: each patient re-drawn with another's stains (``_transferred``)."""
    return dict(SHIFTS, **{OTHER_STAINS: lambda x: _transferred(x, patient_ids, vectors)})


SHIFTS = {
    "none": lambda x: x,
    "H x0.5": lambda x: restain(x, h_scale=0.5),
    "H x0.6": lambda x: restain(x, h_scale=0.6),
    "H x0.8": lambda x: restain(x, h_scale=0.8),
    "H x1.2": lambda x: restain(x, h_scale=1.2),
    "H x1.5": lambda x: restain(x, h_scale=1.5),
    "E x0.5": lambda x: restain(x, e_scale=0.5),
    "E x0.6": lambda x: restain(x, e_scale=0.6),
    "E x1.5": lambda x: restain(x, e_scale=1.5),
    "H x0.6, E x1.4": lambda x: restain(x, h_scale=0.6, e_scale=1.4),
    "H x1.5, E x0.5": lambda x: restain(x, h_scale=1.5, e_scale=0.5),
    "faded 30 %": lambda x: _fade(x, 0.3),
    "hue +15°": lambda x: _hue(x, 15),
    "hue -15°": lambda x: _hue(x, -15),
    "JPEG q50": lambda x: _jpeg(x, 50),
}
OTHER_STAINS = "other patients' stains"
QUICK = ["none", "H x0.6", "E x0.6", OTHER_STAINS, "JPEG q50"]


def oof_images(oof: pd.DataFrame, cache_dir=None) -> np.ndarray:
    """The RGB patches of an out-of-fold table's rows, in its order."""
    patches = datalib.load_patches_cached(DATA, cache_dir)
    key = pd.MultiIndex.from_arrays([patches.patient_ids, patches.xy[:, 0], patches.xy[:, 1]])
    rows = key.get_indexer(pd.MultiIndex.from_arrays([oof.patient_id, oof.x, oof.y]))
    if (rows < 0).any():
        raise SystemExit("the run's out-of-fold patches are not all in ../shared/data/idc")
    return patches.images[rows]


def _load_folds(run_dir: Path):
    """Each ``fold-N/``'s (info, scoring function, out-of-fold scores, network)."""
    import keras

    folds = []
    for d in sorted(run_dir.glob("fold-*")):
        info = json.loads((d / FOLD_INFO).read_text())
        model = keras.saving.load_model(d / FOLD_MODEL, compile=False, safe_mode=True)
        folds.append((info, scoring_function(model, info["normalisation"]), pd.read_parquet(d / FOLD_OOF), model))
    if not folds:
        raise SystemExit(f"{run_dir}: no fold-N/ folders (train with --folds K --run-dir {run_dir})")
    return folds


def fold_logits(folds, fold_of: np.ndarray, images: np.ndarray, prepare=None) -> np.ndarray:
    """Each fold model's IDC logits of its own held-out rows of ``images``, on the scale of its
    out-of-fold scores; ``prepare(x, rows)`` transforms a fold's rows first (stain normalisation)."""
    logit = np.empty(len(images))
    for info, score, *_ in folds:
        m = fold_of == info["fold"]
        x = images[m] if prepare is None else prepare(images[m], m)
        logit[m] = on_run_scale(info, idc_logit(predict_batches(score, x)))
    return logit


def on_run_scale(info: dict, logit: np.ndarray) -> np.ndarray:
    """A fold network's raw IDC logits on the scale of its run's out-of-fold scores."""
    return info.get("logit_scale", 1.0) * (logit - info["logit_offset"])


def calibrated_as_folds(oof: pd.DataFrame, logit: np.ndarray, per_fold: dict) -> np.ndarray:
    """Probabilities of ``oof``'s patches with (shifted) logits ``logit``, each fold through the steps
    and calibration :func:`~idcmap.model.crossval.cross_fitted` chose for it on the other folds'
    unshifted scores (``per_fold``)."""
    prob, fold_of = np.empty(len(oof), np.float32), oof.fold.to_numpy()
    for f, cal in per_fold.items():
        m = fold_of == f
        z = context_logits(
            oof.assign(logit=logit), cal["context_self_weight"], (cal["baseline_weight"], cal["baseline_reference"])
        )
        prob[m] = sigmoid(z[m] / cal["temperature"])
    return prob


def plot_by_density(table: pd.DataFrame, path: Path):
    """Per-patient ROC AUC (blue) and sensitivity (red) against mean optical density, for the
    patients with enough patches of each class to have them (the per-patient rule of the bundle)."""
    table = table[(table.idc_patches >= PER_PATIENT_MIN) & (table.patches - table.idc_patches >= PER_PATIENT_MIN)]
    w, h, m = 640, 400, 60
    img = np.full((h, w, 3), 255, np.uint8)
    lo, hi = table.mean_od.min(), table.mean_od.max()
    px = lambda od, v: (int(m + (od - lo) / (hi - lo + 1e-9) * (w - 2 * m)), int(h - m - v * (h - 2 * m)))  # noqa: E731
    cv2.rectangle(img, px(lo, 0), px(hi, 1), (0, 0, 0), 1)
    for v in (0.0, 0.5, 1.0):
        cv2.putText(img, f"{v:.1f}", (m - 35, px(lo, v)[1] + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
    for od in np.linspace(lo, hi, 5):
        cv2.putText(img, f"{od:.2f}", (px(od, 0)[0] - 12, h - m + 18), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
    cv2.putText(
        img,
        f"{len(table)} out-of-fold patients: ROC AUC (blue), sensitivity (red)",
        (m, 30),
        cv2.FONT_HERSHEY_SIMPLEX,
        0.5,
        (0, 0, 0),
        1,
        cv2.LINE_AA,
    )
    cv2.putText(
        img,
        "patient's mean optical density (paler: left)",
        (w // 2 - 150, h - 15),
        cv2.FONT_HERSHEY_SIMPLEX,
        0.45,
        (0, 0, 0),
        1,
        cv2.LINE_AA,
    )
    for r in table.itertuples():
        if r.roc_auc is not None and not np.isnan(r.roc_auc):
            cv2.circle(img, px(r.mean_od, r.roc_auc), 4, (200, 90, 20), -1, cv2.LINE_AA)
        if r.sensitivity is not None and not np.isnan(r.sensitivity):
            cv2.drawMarker(img, px(r.mean_od, r.sensitivity), (40, 40, 220), cv2.MARKER_TILTED_CROSS, 8, 2)
    cv2.imwrite(str(path), img)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--plot", type=Path)
    ap.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    ap.add_argument("--cache-dir", default=None, help="decoded-patch cache, as for idcmap train")
    ap.add_argument(
        "--normalise",
        action="store_true",
        help="Macenko-normalise each patient to its fold's training patients before scoring",
    )
    args = ap.parse_args()

    folds = _load_folds(args.run_dir)
    oof = pd.concat([f[2] for f in folds], ignore_index=True)
    _, thr, per_fold = cross_fitted(oof)
    images, labels, pids = oof_images(oof, args.cache_dir), oof.label.to_numpy(), oof.patient_id.to_numpy()
    vectors = _vectors_of(images, pids)
    fold_of = oof.fold.to_numpy()
    shifts = with_transfer(pids, vectors)
    names = QUICK if args.quick else list(shifts)

    trained_normalised = all(info.get("stain_normalised") for info, *_ in folds)
    cells = CONTEXT_ARCHS.get(folds[0][3].name, 0)  # a network that sees each patch's neighbourhood
    rows, cols, _ = oof_grid(oof)

    def probabilities(shifted, groups=pids):
        """Each fold model's calibrated probabilities of its held-out patients' ``shifted`` patches
        (normalised by ``groups`` as the run's training was; beside their shifted neighbourhoods
        for a network that sees them)."""

        def prepare(x, m):
            if trained_normalised:
                x = _normalised(x, groups[m])
            elif args.normalise:
                x = _normalised(x, pids[m], _reference(vectors, set(pids[~m])))
            return datalib.neighbourhoods(x, rows[m], cols[m], pids[m], cells) if cells else x

        return calibrated_as_folds(oof, fold_logits(folds, fold_of, shifted, prepare), per_fold)

    results = {}
    for name in names:
        prob = probabilities(shifts[name](images))
        r = classification_metrics(labels, prob, thr)
        results[name] = {k: r[k] for k in ("roc_auc", "sensitivity", "specificity", "balanced_accuracy", "ece")}
        if (oof.source == "patients").any():
            maps = dice_summary(oof, prob, thr, DEFAULT_MIN_IDC_AREA_MM2)
            results[name].update({f"map_dice_{k}": v for k, v in maps.items()})
        print(f"{name:24s} " + "  ".join(f"{k} {v:.4f}" for k, v in results[name].items()), flush=True)
        if name == "none":
            table, unshifted = per_patient_table(labels, prob, thr, pids), prob
    proportion = None
    if trained_normalised:  # does a patient's normalisation depend on how much of it is IDC?
        halves = _halves(labels, pids)
        kept = halves != ""
        alone = probabilities(images, np.where(kept, halves, pids))
        rich = np.char.endswith(halves, ":rich")
        proportion = {
            "patients": int(len(set(pids[kept]))),
            "idc_share_rich": float(labels[rich].mean()),
            "idc_share_poor": float(labels[kept & ~rich].mean()),
            "mean_abs_prob_change": float(np.abs(alone - unshifted)[kept].mean()),
            "mean_prob_change_rich": float((alone - unshifted)[rich].mean()),
            "mean_prob_change_poor": float((alone - unshifted)[kept & ~rich].mean()),
            "calls_changed": float(((alone >= thr) != (unshifted >= thr))[kept].mean()),
        }
        print(
            "IDC-rich and IDC-poor halves normalised alone ({patients} patients; IDC share {idc_share_rich:.2f} "
            "and {idc_share_poor:.2f}): mean |prob change| {mean_abs_prob_change:.4f}, mean change rich "
            "{mean_prob_change_rich:+.4f}, poor {mean_prob_change_poor:+.4f}, calls changed {calls_changed:.4f}".format(
                **proportion
            )
        )
    base = results["none"]
    for r in results.values():
        r["auc_change"] = r["roc_auc"] - base["roc_auc"]
        r["sensitivity_change"] = r["sensitivity"] - base["sensitivity"]
    od = pd.Series(optical_density(images).mean(axis=(1, 2, 3)), index=pids).groupby(level=0).mean()
    table["mean_od"] = table.patient_id.map(od)
    print("\n| shift | ROC AUC | sensitivity | specificity | balanced acc. | ECE | AUC change | sensitivity change |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {r['roc_auc']:.4f} | {r['sensitivity']:.4f} | {r['specificity']:.4f} | "
            f"{r['balanced_accuracy']:.4f} | {r['ece']:.4f} | {r['auc_change']:+.4f} | "
            f"{r['sensitivity_change']:+.4f} |"
        )
    if "map_dice_mean" in base:
        print(f"\nmaps of the whole patients, Dice ({DEFAULT_MIN_IDC_AREA_MM2:g} mm²):")
        print("| shift | mean | least-IDC three | most-IDC three |\n|---|---|---|---|")
        keys = ("map_dice_mean", "map_dice_least_idc_mean", "map_dice_most_idc_mean")
        for name, r in results.items():
            print(f"| {name} | " + " | ".join(f"{r[k]:.3f}" for k in keys) + " |")
    if args.plot:
        plot_by_density(table, args.plot)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "run_dir": str(args.run_dir),
                    "normalised": "trained" if trained_normalised else args.normalise,
                    "idc_proportion": proportion,
                    "shifts": results,
                    "per_patient": table.to_dict(orient="records"),
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
