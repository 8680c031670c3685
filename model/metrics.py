"""Classification metrics for IDC probabilities (scikit-learn), overall and per patient."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

ECE_BINS = 15


def expected_calibration_error(prob: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE of the IDC probability: sum over equal-width bins of |mean prob - IDC rate| x share."""
    prob, labels = np.asarray(prob, np.float64), np.asarray(labels, np.float64)
    which = np.minimum((prob * bins).astype(int), bins - 1)
    ece = 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            ece += m.mean() * abs(prob[m].mean() - labels[m].mean())
    return float(ece)


def reliability_bins(prob: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> list[dict]:
    """Per bin: its range, patch count, mean probability and observed IDC rate."""
    prob, labels = np.asarray(prob, np.float64), np.asarray(labels, np.float64)
    which = np.minimum((prob * bins).astype(int), bins - 1)
    out = []
    for b in range(bins):
        m = which == b
        out.append(
            {
                "lo": b / bins,
                "hi": (b + 1) / bins,
                "n": int(m.sum()),
                "mean_prob": float(prob[m].mean()) if m.any() else None,
                "idc_rate": float(labels[m].mean()) if m.any() else None,
            }
        )
    return out


def classification_metrics(labels: np.ndarray, prob: np.ndarray, threshold) -> dict:
    """All metrics at ``threshold`` (IDC when prob >= threshold; a float, or one per patch). Ranking
    metrics are None when the labels hold a single class."""
    y = np.asarray(labels).astype(int)
    pred = (np.asarray(prob) >= threshold).astype(int)
    both = len(np.unique(y)) == 2
    tn, fp, fn, tp = confusion_matrix(y, pred, labels=[0, 1]).ravel()
    return {
        "n_patches": int(len(y)),
        "n_idc": int(y.sum()),
        "threshold": float(threshold) if np.ndim(threshold) == 0 else None,  # None: one per patch
        "accuracy": float(accuracy_score(y, pred)),
        "sensitivity": float(recall_score(y, pred, zero_division=0)) if y.any() else None,
        "specificity": float(recall_score(1 - y, 1 - pred, zero_division=0)) if (1 - y).any() else None,
        "precision": float(precision_score(y, pred, zero_division=0)),
        "f1": float(f1_score(y, pred, zero_division=0)),
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)) if both else None,
        "roc_auc": float(roc_auc_score(y, prob)) if both else None,
        "pr_auc": float(average_precision_score(y, prob)) if both else None,
        "ece": expected_calibration_error(prob, y),
        "confusion_matrix": {"tn": int(tn), "fp": int(fp), "fn": int(fn), "tp": int(tp)},
    }


def metrics_report(labels, prob, patient_ids, threshold: float) -> dict:
    """Overall metrics plus ``n_patients`` and a ``per_patient`` table."""
    patient_ids = np.asarray(patient_ids)
    report = classification_metrics(labels, prob, threshold)
    report["n_patients"] = int(len(np.unique(patient_ids)))
    report["per_patient"] = {
        str(p): classification_metrics(
            np.asarray(labels)[patient_ids == p], np.asarray(prob)[patient_ids == p], threshold
        )
        for p in sorted(np.unique(patient_ids).tolist())
    }
    return report
