"""Classification metrics for IDC probabilities, overall and per patient.

Computed with numpy from counts and ranks, equal to scikit-learn's definitions (the tests check):
the bootstrap over patients evaluates them a thousand times and a per-patient table once per
patient, and scikit-learn's input checks made that most of an evaluation's time. ``weights`` counts
each patch that many times, as a bootstrap resample that draws its patient that often does."""

from __future__ import annotations

import numpy as np

ECE_BINS = 15


def _weights(weights, n: int) -> np.ndarray:
    return np.ones(n) if weights is None else np.asarray(weights, np.float64)


def score_groups(scores) -> np.ndarray:
    """Each score's rank among the distinct scores (tied scores share one): what :func:`roc_auc`
    needs of the scores, to compute once when the same scores are weighted many ways."""
    return np.unique(np.asarray(scores, np.float64), return_inverse=True)[1]


def roc_auc(labels, scores, weights=None, groups=None) -> float:
    """ROC AUC (Mann-Whitney: the chance a random IDC patch outscores a random other, ties half);
    NaN when the labels hold a single class. ``groups``: :func:`score_groups` of the scores."""
    y, w = np.asarray(labels).astype(bool), _weights(weights, len(labels))
    group = score_groups(scores) if groups is None else groups
    pos, neg = np.bincount(group, w * y), np.bincount(group, w * ~y)
    below = np.cumsum(neg) - neg  # negative weight strictly below each group
    n_pos, n_neg = pos.sum(), neg.sum()
    return float((pos * (below + neg / 2)).sum() / (n_pos * n_neg)) if n_pos and n_neg else float("nan")


def average_precision(labels, scores) -> float:
    """Area under the precision-recall curve as scikit-learn defines it: sum over score thresholds
    of (recall gained) x precision."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, np.float64)
    order = np.argsort(-s, kind="stable")
    last = np.r_[np.flatnonzero(np.diff(s[order])), len(s) - 1]  # last patch of each distinct score
    tp = np.cumsum(y[order])[last]
    precision = tp / (last + 1)
    recall_gain = np.diff(np.r_[0, tp]) / y.sum()
    return float((recall_gain * precision).sum())


def expected_calibration_error(prob, labels, bins: int = ECE_BINS, weights=None) -> float:
    """ECE of the IDC probability: sum over equal-width bins of |mean prob - IDC rate| x share."""
    prob, labels = np.asarray(prob, np.float64), np.asarray(labels, np.float64)
    w = _weights(weights, len(prob))
    which = np.minimum((prob * bins).astype(int), bins - 1)
    n = np.bincount(which, w, bins)
    gap = np.abs(np.bincount(which, w * prob, bins) - np.bincount(which, w * labels, bins))
    return float(gap.sum() / n.sum())


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
    y = np.asarray(labels).astype(bool)
    pred = np.asarray(prob) >= threshold
    tp, fp = int((pred & y).sum()), int((pred & ~y).sum())
    fn, tn = int(y.sum()) - tp, int((~y).sum()) - fp
    sens = tp / (tp + fn) if tp + fn else None
    spec = tn / (tn + fp) if tn + fp else None
    balanced = (sens + spec) / 2 if sens is not None and spec is not None else None  # None: one class
    return {
        "n_patches": int(len(y)),
        "n_idc": tp + fn,
        "threshold": float(threshold) if np.ndim(threshold) == 0 else None,  # None: one per patch
        "accuracy": (tp + tn) / len(y) if len(y) else 0.0,
        "sensitivity": sens,
        "specificity": spec,
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "f1": 2 * tp / (2 * tp + fp + fn) if tp else 0.0,
        "balanced_accuracy": balanced,
        "roc_auc": roc_auc(y, prob) if balanced is not None else None,
        "pr_auc": average_precision(y, prob) if balanced is not None else None,
        "ece": expected_calibration_error(prob, y),
        "confusion_matrix": {"tn": tn, "fp": fp, "fn": fn, "tp": tp},
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
