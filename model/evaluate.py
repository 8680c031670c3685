"""Evaluate a bundle on Kaggle-layout folders at its threshold, or report its stored out-of-fold
figures; ROC and reliability plots as PNG."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from sklearn.metrics import auc, roc_curve

from .backends import make_backend
from .bundle import OOF_FILE, BundleError, ModelBundle, load_bundle
from .crossval import cross_fitted, oof_grid, out_of_fold_report
from .data import load_patches
from .metrics import classification_metrics, expected_calibration_error, metrics_report, reliability_bins, roc_auc
from .scoring import neighbour_counts

_SIZE, _MARGIN = 480, 60
_BLACK, _GREY, _BLUE, _RED = (0, 0, 0), (170, 170, 170), (200, 90, 20), (40, 40, 220)


def by_neighbours(labels, prob, threshold, rows, cols, groups) -> dict:
    """The figures of the patches with a scored neighbour on their slide's grid (where the context
    step acts) and of the isolated ones (scored by the network alone: a folder of scattered patches
    is mostly these), apart; a kind with no patch is left out."""
    labels, prob = np.asarray(labels), np.asarray(prob)
    has = neighbour_counts(rows, cols, groups) > 0
    threshold = np.broadcast_to(np.asarray(threshold, np.float64), has.shape)
    kinds = (("with_neighbours", has), ("isolated", ~has))
    return {kind: classification_metrics(labels[m], prob[m], threshold[m]) for kind, m in kinds if m.any()}


def evaluate(
    bundle, data_dirs, backend: str = "onnx", threads: int | None = None, plots_dir=None, validation_only: bool = False
) -> dict:
    """Score every patch of ``data_dirs`` with ``bundle`` and report the metrics (JSON-ready).

    ``validation_only`` keeps only the bundle's validation patients (held out from training).
    """
    if not isinstance(bundle, ModelBundle):
        bundle = load_bundle(bundle)
    if validation_only and not bundle.validation_patients:
        raise BundleError(
            f"{bundle.path}: has no validation patients (it was cross-validated and trained on "
            "every patient); its held-out figures are out-of-fold: use --out-of-fold"
        )
    patches = load_patches(data_dirs, patients=bundle.validation_patients if validation_only else None)
    patch_prob = make_backend(bundle, backend, threads=threads).predict(bundle.inputs(patches.images, *patches.grid))
    prob = bundle.final_probability(patch_prob, *patches.grid)
    report = metrics_report(patches.labels, prob, patches.patient_ids, bundle.threshold)
    if len(np.unique(patches.labels)) == 2:
        report["patch_only_roc_auc"] = roc_auc(patches.labels, patch_prob)
    report.update(
        model=bundle.version,
        backend=backend,
        data_dirs=[str(d) for d in data_dirs],
        reliability=reliability_bins(prob, patches.labels),
        by_neighbours=by_neighbours(patches.labels, prob, bundle.threshold, *patches.grid),
    )
    if plots_dir is not None:
        report["plots"] = write_plots(patches.labels, prob, plots_dir, bundle.threshold)
    return report


def evaluate_out_of_fold(bundle, plots_dir=None) -> dict:
    """The bundle's out-of-fold figures, recomputed from the fold predictions it stores: each
    fold's patients scored by the model that did not train on them, calibrated and thresholded
    with values fitted on the other folds."""
    if not isinstance(bundle, ModelBundle):
        bundle = load_bundle(bundle)
    if not bundle.has_file(OOF_FILE):
        raise BundleError(f"{bundle.path}: holds no out-of-fold predictions (trained without --folds)")
    oof = pd.read_parquet(bundle.file(OOF_FILE))
    # a bundle made before the slide baseline step scores without it: its figures are fitted without it
    scores = cross_fitted(oof) if "baseline" in bundle.meta.get("context", {}) else cross_fitted(oof, baselines=(0.0,))
    report = out_of_fold_report(oof, per_patient=True, scores=scores)
    prob, thr, _ = scores
    report.update(
        model=bundle.version,
        backend="stored out-of-fold predictions",
        reliability=reliability_bins(prob, oof["label"].to_numpy()),
        by_neighbours=by_neighbours(oof["label"].to_numpy(), prob, thr, *oof_grid(oof)),
    )
    if plots_dir is not None:
        report["plots"] = write_plots(oof["label"].to_numpy(), prob, plots_dir, thr)
    return report


def _to_px(x: float, y: float) -> tuple[int, int]:
    span = _SIZE - 2 * _MARGIN
    return int(round(_MARGIN + x * span)), int(round(_SIZE - _MARGIN - y * span))


def _axes(title: str, xlabel: str, ylabel: str) -> np.ndarray:
    img = np.full((_SIZE, _SIZE, 3), 255, np.uint8)
    cv2.rectangle(img, _to_px(0, 0), _to_px(1, 1), _BLACK, 1)
    for t in np.linspace(0, 1, 6):
        cv2.putText(
            img,
            f"{t:.1f}",
            (_to_px(t, 0)[0] - 10, _SIZE - _MARGIN + 18),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.4,
            _BLACK,
            1,
            cv2.LINE_AA,
        )
        cv2.putText(
            img, f"{t:.1f}", (_MARGIN - 30, _to_px(0, t)[1] + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, _BLACK, 1, cv2.LINE_AA
        )
    cv2.putText(img, title, (_MARGIN, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.55, _BLACK, 1, cv2.LINE_AA)
    cv2.putText(img, xlabel, (_SIZE // 2 - 60, _SIZE - 15), cv2.FONT_HERSHEY_SIMPLEX, 0.45, _BLACK, 1, cv2.LINE_AA)
    cv2.putText(img, ylabel, (5, _MARGIN - 12), cv2.FONT_HERSHEY_SIMPLEX, 0.45, _BLACK, 1, cv2.LINE_AA)
    cv2.line(img, _to_px(0, 0), _to_px(1, 1), _GREY, 1, cv2.LINE_AA)
    return img


def roc_plot(labels, prob, threshold) -> np.ndarray:
    """ROC curve (BGR image) with the operating point of ``threshold`` marked."""
    fpr, tpr, _ = roc_curve(labels, prob)
    img = _axes(f"ROC curve, AUC {auc(fpr, tpr):.4f}", "false positive rate", "true positive rate")
    pts = np.array([_to_px(x, y) for x, y in zip(fpr, tpr)], np.int32)
    cv2.polylines(img, [pts], False, _BLUE, 2, cv2.LINE_AA)
    pred = np.asarray(prob) >= threshold
    y = np.asarray(labels).astype(bool)
    op = (float((pred & ~y).sum() / max((~y).sum(), 1)), float((pred & y).sum() / max(y.sum(), 1)))
    cv2.circle(img, _to_px(*op), 6, _RED, -1, cv2.LINE_AA)
    label = f"threshold {threshold:.3f}" if np.ndim(threshold) == 0 else "thresholds of each fold"
    cv2.putText(
        img, label, (_to_px(*op)[0] + 10, _to_px(*op)[1] + 18), cv2.FONT_HERSHEY_SIMPLEX, 0.45, _RED, 1, cv2.LINE_AA
    )
    return img


def reliability_plot(labels, prob) -> np.ndarray:
    """Reliability diagram (BGR image): observed IDC rate per probability bin, bar width = bin."""
    bins = reliability_bins(prob, labels)
    img = _axes(
        f"Reliability, ECE {expected_calibration_error(prob, labels):.4f}",
        "predicted IDC probability",
        "observed IDC rate",
    )
    for b in bins:
        if b["n"]:
            cv2.rectangle(img, _to_px(b["lo"], 0), _to_px(b["hi"], b["idc_rate"]), _BLUE, -1)
            cv2.rectangle(img, _to_px(b["lo"], 0), _to_px(b["hi"], b["idc_rate"]), _BLACK, 1)
            cv2.circle(img, _to_px((b["lo"] + b["hi"]) / 2, b["mean_prob"]), 3, _RED, -1, cv2.LINE_AA)
    return img


def write_plots(labels, prob, plots_dir, threshold) -> dict:
    """Write roc.png and reliability.png into ``plots_dir``; returns their paths."""
    plots_dir = Path(plots_dir)
    plots_dir.mkdir(parents=True, exist_ok=True)
    out = {}
    if len(np.unique(labels)) == 2:
        out["roc"] = str(plots_dir / "roc.png")
        cv2.imwrite(out["roc"], roc_plot(labels, prob, threshold))
    out["reliability"] = str(plots_dir / "reliability.png")
    cv2.imwrite(out["reliability"], reliability_plot(labels, prob))
    return out
