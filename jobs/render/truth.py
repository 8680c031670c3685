"""Agreement of a slide's IDC probability map with a ground-truth mask at patch resolution."""

from __future__ import annotations

import numpy as np

from idcmap.model.metrics import roc_auc

#: grey levels of the ground-truth masks written by ``idcmap build-slide``
NO_PATCH, NO_IDC, IDC = 0, 128, 255


def map_agreement(prob: np.ndarray, mask: np.ndarray, threshold: float) -> dict:
    """Dice of (prob >= threshold) against IDC, and ROC AUC, over the patches the mask labels.

    A labelled patch that the job did not score (not tissue) counts as predicted "no IDC" with
    probability 0, so missing patches cost the map rather than being ignored.
    """
    if prob.shape != mask.shape:
        raise ValueError(f"map {prob.shape} and mask {mask.shape} differ in shape")
    labelled = mask != NO_PATCH
    truth = mask[labelled] == IDC
    p = np.nan_to_num(prob[labelled], nan=0.0)
    pred = p >= threshold
    denom = pred.sum() + truth.sum()
    return {
        "patches": int(labelled.sum()),
        "idc_patches": int(truth.sum()),
        "scored": int(np.isfinite(prob[labelled]).sum()),
        "dice": float(2 * (pred & truth).sum() / denom) if denom else 1.0,
        "auc": roc_auc(truth, p),
    }
