"""Prediction-time batch-norm adaptation per patient, out of fold: does it hold stains better?

    python benchmarks/bench_adapt_bn.py RUN_DIR [--priors 16 64 256 1024] [--cache-dir CACHE] [--json OUT]

Each fold network of a cross-validated run scores its held-out patients with every batch-norm
layer, in order, normalising by a mixture of its trained statistics and the patient's own
(Schneider et al. 2020): weight ``n / (n + N)`` on the mean and variance of that layer's input over
the patient's ``n`` patches (earlier layers already adapted), ``N`` the prior strength. ``N`` is
chosen inside the folds (each fold takes the one whose adapted scores of the other folds rank best
after the context step), then the bundle's cross-fitted steps as in ``bench_stain_shift.py``: the
unshifted figures, the stain shifts at each fold's calibration, the maps of the 24 whole patients,
and the IDC-proportion check (each patient's IDC-rich and IDC-poor halves adapted alone).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from bench_ensemble import difference_interval
from bench_stain_shift import (
    _halves,
    _load_folds,
    _vectors_of,
    calibrated_as_folds,
    on_run_scale,
    oof_images,
    with_transfer,
)
from oof_maps import map_dice, patient_maps

from idcmap.model.crossval import choose_context_weight, context_logits, cross_fitted
from idcmap.model.metrics import classification_metrics, roc_auc
from idcmap.model.scoring import idc_logit, normalise

SHIFT_NAMES = ("none", "H x0.5", "H x0.6", "E x0.6", "other patients' stains", "JPEG q50")
KEYS = ("roc_auc", "balanced_accuracy", "sensitivity", "specificity", "ece")


def adapted_probs(model, normalisation: dict, images: np.ndarray, prior: float) -> np.ndarray:
    """Softmax (n, 2) of one patient's patches through ``model`` (a chain of layers) with each batch
    norm's statistics moved ``n / (n + prior)`` of the way to the patient's own."""
    import keras
    import tensorflow as tf

    a = len(images) / (len(images) + prior)
    x = normalise(tf.cast(images, tf.float32), normalisation)
    for layer in model.layers[1:]:
        if isinstance(layer, keras.layers.BatchNormalization):
            mean, var = tf.nn.moments(x, axes=list(range(len(x.shape) - 1)))
            mean = (1 - a) * layer.moving_mean + a * mean
            var = (1 - a) * layer.moving_variance + a * var
            x = tf.nn.batch_normalization(x, mean, var, layer.beta, layer.gamma, layer.epsilon)
        else:
            x = layer(x, training=False)
    return x.numpy()


def fold_adapted_logits(folds, oof: pd.DataFrame, images: np.ndarray, groups: np.ndarray, prior: float) -> np.ndarray:
    """Each fold network's adapted logits of its held-out rows, each group (patient) adapted on
    itself, on the scale of the run's out-of-fold scores."""
    logit = np.empty(len(oof))
    fold_of = oof.fold.to_numpy()
    for info, _, _, model in folds:
        for g in np.unique(groups[fold_of == info["fold"]]):
            m = (fold_of == info["fold"]) & (groups == g)
            logit[m] = on_run_scale(info, idc_logit(adapted_probs(model, info["normalisation"], images[m], prior)))
    return logit


def _rank(oof: pd.DataFrame) -> float:
    """ROC AUC of ``oof``'s logits after the context step chosen on them."""
    return roc_auc(oof.label.to_numpy(), context_logits(oof, choose_context_weight(oof)))


def nested(oof: pd.DataFrame, logits: dict, fitted: dict) -> tuple[np.ndarray, np.ndarray, dict, dict]:
    """(probability, threshold, per-fold calibration, per-fold prior): each fold takes the prior
    whose adapted logits of the other folds rank best after their own context step, and that
    prior's cross-fitted figures (``fitted``: prior -> :func:`cross_fitted` of its logits)."""
    fold = oof.fold.to_numpy()
    prob, thr, per_fold, chosen = np.zeros(len(oof), np.float32), np.zeros(len(oof)), {}, {}
    for f in np.unique(fold):
        m = fold == f
        rank = {n: _rank(oof[~m].assign(logit=z[~m])) for n, z in logits.items()}
        n = chosen[int(f)] = max(rank, key=rank.__getitem__)
        prob[m], thr[m], per_fold[int(f)] = fitted[n][0][m], fitted[n][1][m], fitted[n][2][int(f)]
    return prob, thr, per_fold, chosen


def figures(oof: pd.DataFrame, fitted, shifted: dict) -> dict:
    """The unshifted figures and mean map Dice of ``fitted`` (probability, threshold, per-fold
    calibration), and each shift's change of ROC AUC and sensitivity (``shifted``: name -> logits)."""
    y, (prob, thr, per_fold) = oof.label.to_numpy(), fitted
    row = {k: classification_metrics(y, prob, thr)[k] for k in KEYS}
    row["map_dice_mean"] = float(np.mean(list(map_dice(patient_maps(oof, prob, thr), 0.2).values())))
    for name, z in shifted.items():
        m = classification_metrics(y, calibrated_as_folds(oof, z, per_fold), thr)
        row[name] = [m["roc_auc"] - row["roc_auc"], m["sensitivity"] - row["sensitivity"]]
    return row


def proportion_check(folds, oof, images, whole: np.ndarray, prior: float, fitted) -> dict:
    """Each patient's IDC-rich and IDC-poor halves adapted alone against the patient adapted whole
    (``whole``: those logits), at ``fitted``'s calibration."""
    y, pids = oof.label.to_numpy(), oof.patient_id.to_numpy()
    halves = _halves(y, pids)
    kept = halves != ""
    alone = fold_adapted_logits(folds, oof, images, np.where(kept, halves, pids), prior)
    calls_alone, calls_whole = (calibrated_as_folds(oof, z, fitted[2]) >= fitted[1] for z in (alone, whole))
    return {
        "prior": prior,
        "patients": int(len(set(pids[kept]))),
        "calls_changed": float((calls_alone != calls_whole)[kept].mean()),
        "mean_logit_change_rich": float((alone - whole)[np.char.endswith(halves, ":rich")].mean()),
        "mean_logit_change_poor": float((alone - whole)[np.char.endswith(halves, ":poor")].mean()),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--priors", type=float, nargs="+", default=[16, 64, 256, 1024])
    ap.add_argument("--cache-dir", default=None, help="decoded-patch cache, as for idcmap train")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    folds = _load_folds(args.run_dir)
    oof = pd.concat([f[2] for f in folds], ignore_index=True)
    images, pids = oof_images(oof, args.cache_dir), oof.patient_id.to_numpy()
    shifts = with_transfer(pids, _vectors_of(images, pids))
    priors = [np.inf, *args.priors]
    logits: dict = {}  # shift -> prior -> logits
    for name in SHIFT_NAMES:
        x = shifts[name](images)
        logits[name] = {n: fold_adapted_logits(folds, oof, x, pids, n) for n in priors}
        print(f"scored {name}", flush=True)
    print(f"unadapted logits reproduce the stored ones to {np.abs(logits['none'][np.inf] - oof.logit).max():.1e}")
    rows, fitted = {}, {}
    for n in priors:
        fitted[n] = cross_fitted(oof.assign(logit=logits["none"][n]))
        rows["unadapted" if n == np.inf else f"N = {n:g}"] = figures(
            oof, fitted[n], {s: logits[s][n] for s in SHIFT_NAMES[1:]}
        )
    *nest, chosen = nested(oof, {n: logits["none"][n] for n in args.priors}, fitted)
    in_fold = [oof.fold.to_numpy() == f for f in chosen]
    rows["N chosen inside the folds"] = figures(
        oof, nest, {s: np.select(in_fold, [logits[s][n] for n in chosen.values()]) for s in SHIFT_NAMES[1:]}
    )
    y = oof.label.to_numpy()
    print("| scoring | " + " | ".join(KEYS) + " | mean map Dice | " + " | ".join(SHIFT_NAMES[1:]) + " |")
    print("|---" * (len(KEYS) + len(SHIFT_NAMES) + 1) + "|")
    for label, r in rows.items():
        shifted = " | ".join(f"{r[s][0]:+.4f} / {r[s][1]:+.4f}" for s in SHIFT_NAMES[1:])
        print(f"| {label} | " + " | ".join(f"{r[k]:.4f}" for k in KEYS) + f" | {r['map_dice_mean']:.4f} | {shifted} |")
    out = {
        "rows": rows,
        "priors_chosen": chosen,
        "roc_auc_change_95": difference_interval(y, fitted[np.inf][0], nest[0], pids),
        # at fold 0's prior in every fold (the same prior wherever all folds chose alike)
        "halves": proportion_check(folds, oof, images, logits["none"][chosen[0]], chosen[0], nest),
    }
    print(f"priors chosen per fold: {chosen}; ROC AUC change, 95 % over patients: {out['roc_auc_change_95']}")
    print(f"IDC-rich and IDC-poor halves adapted alone: {out['halves']}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=float))


if __name__ == "__main__":
    main()
