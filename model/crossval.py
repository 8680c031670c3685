"""Patient-level k-fold cross-validation: fold assignment, out-of-fold calibration and metrics.

Pure numpy/pandas (no training here; :mod:`idcmap.model.make_bundle` trains the folds). The out-of-fold
table has one row per patch: ``patient_id, source, x, y, label, fold, logit``, where ``logit`` is
the fold model's IDC logit with its class-weight prior removed, i.e. what that model says about a
patient it never saw.

Cross-fitted calibration keeps every figure held out: fold k's neighbour-context weight, slide
baseline weight and reference, temperature and threshold are chosen on the out-of-fold scores of
the *other* folds (patients that fold k's model trained on, scored by models that did not), so
nothing about fold k's patients is chosen on them. The shipped bundle's are chosen the same way on
all folds' out-of-fold scores together.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from pathlib import PurePath

import numpy as np
import pandas as pd

from idcmap.errors import InputError
from idcmap.slide_tiling import PATCH_SIZE

from .calibration import choose_threshold, fit_temperature
from .metrics import classification_metrics, expected_calibration_error, roc_auc, score_groups
from .scoring import (
    BASELINE_MIN_PATCHES,
    BASELINE_QUANTILE,
    CONTEXT_SELF_WEIGHT,
    mix_neighbours,
    sigmoid,
    with_baseline,
)

FOLD_SALT = "idcmap-cv-v1"
#: candidate weights of a patch's own logit in the neighbour context step (1.0: the patch alone);
#: each fold picks the one with the best ROC AUC on the other folds' out-of-fold scores
CONTEXT_WEIGHTS = (0.25, 0.5, 0.75, 1.0)
#: candidate weights of the slide baseline step (0: none), chosen the same way after the context weight
BASELINE_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
#: a patient enters the per-patient figures when it has at least this many patches of each class
PER_PATIENT_MIN = 10
BOOTSTRAP = 1000


def _rank(patient_id: str) -> str:
    return hashlib.sha256(f"{FOLD_SALT}:{patient_id}".encode()).hexdigest()


def assign_folds(patient_ids, sources, labels, k: int = 3) -> dict[str, int]:
    """Patient -> fold in 0..k-1, balanced by data folder and IDC prevalence, deterministic.

    Within each data folder, patients are ordered by IDC prevalence (ties by a hash of the id) and
    dealt out in blocks of k, each block in a hash-chosen order of the folds: every fold gets about
    the same number of patients of each folder across the whole range of prevalence. A folder
    counts by its name, not its path, so the deal is the same on every machine.
    """
    if k < 2:
        raise InputError(f"cross-validation needs k >= 2 folds, not {k}")
    df = pd.DataFrame(
        {
            "patient_id": np.asarray(patient_ids),
            "source": [PurePath(str(s)).name for s in sources],
            "label": np.asarray(labels, np.float64),
        }
    )
    folds: dict[str, int] = {}
    for source, group in df.groupby("source", sort=True):
        prevalence = group.groupby("patient_id")["label"].mean()
        if len(prevalence) < k:
            raise InputError(f"{source}: {len(prevalence)} patients cannot fill {k} folds")
        ordered = sorted(prevalence.index, key=lambda p: (prevalence[p], _rank(p)))
        for start in range(0, len(ordered), k):
            block = ordered[start : start + k]
            order = sorted(range(k), key=lambda f: _rank(f"{source}:{start}:{f}"))
            for patient, fold in zip(block, order):
                folds[patient] = fold
    return folds


def oof_grid(oof: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, cols, patient ids): each patch's place on its patient's 50-px grid."""
    rows, cols = oof["y"].to_numpy() // PATCH_SIZE, oof["x"].to_numpy() // PATCH_SIZE
    return rows, cols, oof["patient_id"].to_numpy()


def context_logits(
    oof: pd.DataFrame, self_weight: float = CONTEXT_SELF_WEIGHT, baseline: tuple[float, float] = (0.0, 0.0)
) -> np.ndarray:
    """Each patch's logit mixed with its scored neighbours' on its patient's 50-px grid, then
    lifted if its patient's baseline is low (``baseline``: weight and reference; see
    :func:`~model.scoring.with_baseline`)."""
    rows, cols, patients = oof_grid(oof)
    z = mix_neighbours(oof["logit"].to_numpy(), rows, cols, patients, self_weight)
    return with_baseline(z, patients, *baseline)


def choose_context_weight(oof: pd.DataFrame, weights=CONTEXT_WEIGHTS) -> float:
    """The self weight among ``weights`` whose context logits rank ``oof``'s patches best (ROC
    AUC; ties to the larger weight, i.e. less context)."""
    y = oof["label"].to_numpy()
    return max(sorted(weights), key=lambda w: roc_auc(y, context_logits(oof, w)))


def baseline_reference(z: np.ndarray, patients: np.ndarray) -> float:
    """The median over the patches (of patients with enough of them) of their patient's baseline,
    the :data:`~model.scoring.BASELINE_QUANTILE` of its context logits ``z``. Weighted by patch, as
    the temperature is fitted, so that the step leaves the typical patch where the temperature
    expects it."""
    by_patient = pd.Series(z).groupby(patients)
    base = by_patient.transform(lambda s: s.quantile(BASELINE_QUANTILE))
    base = base[by_patient.transform("size") >= BASELINE_MIN_PATCHES]
    return float(base.median()) if len(base) else 0.0


def choose_baseline(oof: pd.DataFrame, self_weight: float, weights=BASELINE_WEIGHTS) -> tuple[float, float]:
    """(weight, reference) of the slide baseline step: the reference from ``oof``'s patients, the
    weight among ``weights`` that ranks ``oof``'s patches best after the context step (ROC AUC;
    ties to the smaller weight, i.e. less change)."""
    y, patients = oof["label"].to_numpy(), oof["patient_id"].to_numpy()
    z = context_logits(oof, self_weight)  # the neighbour mixing once, each weight on top of it
    reference = baseline_reference(z, patients)
    auc = {b: roc_auc(y, with_baseline(z, patients, b, reference)) for b in weights}
    return max(sorted(weights, reverse=True), key=auc.__getitem__), reference


def fit_calibration(z: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(temperature, threshold) fitted on final logits ``z``: see :mod:`idcmap.model.calibration`."""
    t = fit_temperature(z, labels)
    return t, choose_threshold(sigmoid(z / t), labels)


def cross_fitted(
    oof: pd.DataFrame, weights=CONTEXT_WEIGHTS, baselines=BASELINE_WEIGHTS
) -> tuple[np.ndarray, np.ndarray, dict]:
    """(probability, threshold per patch, per fold {context weight, baseline weight and reference,
    temperature, threshold}) with each fold's chosen on the other folds only."""
    y, fold = oof["label"].to_numpy(), oof["fold"].to_numpy()
    prob, thr, per_fold = np.zeros(len(oof), np.float32), np.zeros(len(oof)), {}
    for f in np.unique(fold):
        mine = fold == f
        w = choose_context_weight(oof[~mine], weights)
        b = choose_baseline(oof[~mine], w, baselines)
        z = context_logits(oof, w, b)  # neither step crosses patients, so neither crosses folds
        t, threshold = fit_calibration(z[~mine], y[~mine])
        prob[mine], thr[mine] = sigmoid(z[mine] / t), threshold
        per_fold[int(f)] = {
            "context_self_weight": w,
            "baseline_weight": b[0],
            "baseline_reference": b[1],
            "temperature": t,
            "threshold": threshold,
            "n_patches": int(mine.sum()),
            "n_patients": int(oof.loc[mine, "patient_id"].nunique()),
        }
    return prob, thr, per_fold


def per_patient_table(labels, prob, thr, patient_ids) -> pd.DataFrame:
    """One row per patient: patches, IDC patches, ROC AUC, sensitivity, specificity, balanced
    accuracy (None where a class is missing)."""
    df = pd.DataFrame(
        {
            "p": np.asarray(patient_ids),
            "y": np.asarray(labels).astype(int),
            "prob": prob,
            "call": np.asarray(prob) >= thr,
        }
    )
    rows = []
    for p, g in df.groupby("p", sort=True):
        n1, n0 = int(g.y.sum()), int((1 - g.y).sum())
        sens = float(g.call[g.y == 1].mean()) if n1 else None
        spec = float(1 - g.call[g.y == 0].mean()) if n0 else None
        rows.append(
            {
                "patient_id": p,
                "patches": len(g),
                "idc_patches": n1,
                "roc_auc": roc_auc(g.y, g.prob) if n1 and n0 else None,
                "sensitivity": sens,
                "specificity": spec,
                "balanced_accuracy": (sens + spec) / 2 if sens is not None and spec is not None else None,
            }
        )
    return pd.DataFrame(rows)


def spread(table: pd.DataFrame, min_per_class: int = PER_PATIENT_MIN) -> dict:
    """Median and worst tenth (10th percentile) of the per-patient figures, over patients with at
    least ``min_per_class`` patches of each class."""
    big = table[(table.idc_patches >= min_per_class) & (table.patches - table.idc_patches >= min_per_class)]
    out = {"n_patients": int(len(big)), "rule": f">= {min_per_class} patches of each class"}
    for key in ("roc_auc", "balanced_accuracy", "sensitivity", "specificity"):
        v = big[key].astype(float).to_numpy()
        out[key] = (
            {"median": float(np.median(v)), "worst_tenth": float(np.percentile(v, 10)), "min": float(v.min())}
            if len(v)
            else None
        )
    return out


def patient_resamples(patient_ids, n: int = BOOTSTRAP, seed: int = 0) -> Iterator[np.ndarray]:
    """``n`` resamplings of whole patients with replacement, each as per-patch weights (a patient
    drawn k times weighs its patches k times)."""
    _, patient = np.unique(np.asarray(patient_ids), return_inverse=True)
    n_patients, rng = patient.max() + 1, np.random.default_rng(seed)
    for _ in range(n):
        yield np.bincount(rng.integers(0, n_patients, n_patients), minlength=n_patients)[patient].astype(np.float64)


def resampled_figures(labels, prob, thr, weightings: Iterable[np.ndarray]) -> dict[str, list[float]]:
    """The pooled figures (ROC AUC, balanced accuracy, sensitivity, specificity, ECE) under each
    per-patch weighting, e.g. :func:`patient_resamples`; weightings with a single class are skipped."""
    y, prob = np.asarray(labels).astype(bool), np.asarray(prob, np.float64)
    call, groups = prob >= np.asarray(thr), score_groups(prob)
    samples: dict[str, list[float]] = {
        k: [] for k in ("roc_auc", "balanced_accuracy", "sensitivity", "specificity", "ece")
    }
    for w in weightings:
        n_pos, n_neg = w[y].sum(), w[~y].sum()
        if not n_pos or not n_neg:
            continue
        sens, spec = w[y & call].sum() / n_pos, 1 - w[~y & call].sum() / n_neg
        samples["roc_auc"].append(roc_auc(y, prob, w, groups))
        samples["sensitivity"].append(sens)
        samples["specificity"].append(spec)
        samples["balanced_accuracy"].append((sens + spec) / 2)
        samples["ece"].append(expected_calibration_error(prob, y, weights=w))
    return samples


def bootstrap_intervals(labels, prob, thr, patient_ids, n: int = BOOTSTRAP, seed: int = 0) -> dict:
    """95 % intervals of the pooled figures over :func:`patient_resamples`."""
    samples = resampled_figures(labels, prob, thr, patient_resamples(patient_ids, n, seed))
    return {k: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] for k, v in samples.items()}


def out_of_fold_report(oof: pd.DataFrame, bootstrap: int = BOOTSTRAP, per_patient: bool = False, scores=None) -> dict:
    """Everything the bundle stores about its out-of-fold figures (JSON-ready); ``per_patient``
    adds every patient's metrics (as ``idcmap evaluate`` reports them). ``scores``: the result of
    :func:`cross_fitted` on ``oof`` when the caller already has it."""
    prob, thr, per_fold = scores if scores is not None else cross_fitted(oof)
    y, patients = oof["label"].to_numpy(), oof["patient_id"].to_numpy()
    report = classification_metrics(y, prob, thr)
    table = per_patient_table(y, prob, thr, patients)
    if per_patient:
        report["per_patient"] = {
            str(p): classification_metrics(y[m], prob[m], thr[m])
            for p in sorted(set(patients.tolist()))
            for m in [patients == p]
        }
    report.update(
        kind="out-of-fold",
        n_patients=int(len(table)),
        n_folds=len(per_fold),
        folds=per_fold,
        patch_only_roc_auc=roc_auc(y, oof["logit"]),
        per_patient_spread=spread(table),
        intervals_95=bootstrap_intervals(y, prob, thr, patients, bootstrap),
        by_source={
            str(s): classification_metrics(y[m], prob[m], thr[m])
            for s in sorted(oof["source"].unique())
            for m in [oof["source"].to_numpy() == s]
        },
    )
    return report
