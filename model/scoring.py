"""The scoring function shared by training, export and inference: uint8 RGB -> class probabilities,
the map from probabilities to calibrated IDC probabilities (temperature scaling), the spatial
context step that mixes each patch's score with its neighbours' on the patch grid, and the slide
baseline step that lifts a slide whose least IDC-like tissue scores below the usual level."""

from __future__ import annotations

import numpy as np

from idcmap.slide_tiling import PATCH_SIZE

#: clip for probabilities before taking logits (float32 softmax saturates near 1e-7)
PROB_EPS = 1e-7


def normalise(x, normalisation: dict):
    """(x - mean) / std per RGB channel, on float32 pixel values in [0, 255]."""
    # numpy constants, not captured eager tensors: tf2onnx would turn those into graph inputs
    mean = np.asarray(normalisation["mean"], np.float32)
    std = np.asarray(normalisation["std"], np.float32)
    return (x - mean) / std


def scoring_function(model, normalisation: dict):
    """A ``tf.function``: uint8 (N, 50, 50, 3) RGB patches (6 channels: with their neighbourhoods,
    for a network that takes them) -> softmax probabilities (N, 2)."""
    import tensorflow as tf

    channels = model.input_shape[-1]

    @tf.function(input_signature=[tf.TensorSpec([None, PATCH_SIZE, PATCH_SIZE, channels], tf.uint8, name="patches")])
    def score(patches):
        return model(normalise(tf.cast(patches, tf.float32), normalisation), training=False)

    return score


def idc_logit(probs: np.ndarray) -> np.ndarray:
    """log(p_idc / p_no_idc) from (N, 2) softmax probabilities, float64."""
    p = np.clip(np.asarray(probs, np.float64), PROB_EPS, 1.0)
    return np.log(p[:, 1]) - np.log(p[:, 0])


def calibrated_probability(probs: np.ndarray, temperature: float, offset: float = 0.0) -> np.ndarray:
    """IDC probability after temperature scaling: sigmoid((logit - offset) / T), float32 (N,).

    ``offset`` undoes the prior shift of class-weighted (or balanced) training: log(w_idc / w_no_idc).
    """
    return sigmoid((idc_logit(probs) - float(offset)) / float(temperature))


def sigmoid(z) -> np.ndarray:
    """1 / (1 + exp(-z)) as float32, without overflow."""
    return (0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, np.float64)))).astype(np.float32)


def logit(prob) -> np.ndarray:
    """log(p / (1 - p)), float64, with p clipped to [PROB_EPS, 1 - PROB_EPS]."""
    p = np.clip(np.asarray(prob, np.float64), PROB_EPS, 1.0 - PROB_EPS)
    return np.log(p) - np.log1p(-p)


#: weight of a patch's own logit in its final score; the rest goes to the mean logit of its scored
#: 8-connected grid neighbours. Fixed before looking at validation results (equal weight to the patch
#: and to its neighbourhood), not tuned on them.
CONTEXT_SELF_WEIGHT = 0.5
_NEIGHBOURS = [(dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1) if dr or dc]


def _group_index(groups, n: int) -> np.ndarray:
    """Each patch's group (slide) as an integer; one group when ``groups`` is None."""
    return np.zeros(n, np.int64) if groups is None else np.unique(np.asarray(groups), return_inverse=True)[1]


def _neighbour_sums(z: np.ndarray, rows, cols, groups) -> tuple[np.ndarray, np.ndarray]:
    """Per patch: the sum of its scored 8-neighbours' ``z`` and how many there are, on its group's
    grid (patches of different groups are never neighbours)."""
    rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
    sums, counts = np.zeros(len(z)), np.zeros(len(z))
    group_index = _group_index(groups, len(z))
    for g in np.unique(group_index):
        idx = np.flatnonzero(group_index == g)
        r, c = rows[idx] - rows[idx].min() + 1, cols[idx] - cols[idx].min() + 1
        total = np.zeros((r.max() + 2, c.max() + 2))
        count = np.zeros_like(total)
        np.add.at(count, (r, c), 1.0)
        if count.max() > 1:
            raise ValueError("two patches at the same grid position")
        total[r, c] = z[idx]
        sums[idx] = sum(total[r + dr, c + dc] for dr, dc in _NEIGHBOURS)
        counts[idx] = sum(count[r + dr, c + dc] for dr, dc in _NEIGHBOURS)
    return sums, counts


def mix_neighbours(z, rows, cols, groups=None, self_weight: float = CONTEXT_SELF_WEIGHT) -> np.ndarray:
    """``self_weight * z + (1 - self_weight) * mean(z of the scored 8-neighbours)`` per patch.

    ``rows``/``cols`` are grid positions; patches of different ``groups`` (slides) are never
    neighbours. A patch with no scored neighbour keeps its own value. float64 (N,).
    """
    z = np.asarray(z, np.float64)
    out = z.copy()
    if self_weight >= 1.0 or not len(z):
        return out
    sums, counts = _neighbour_sums(z, rows, cols, groups)
    has = counts > 0
    out[has] = self_weight * z[has] + (1.0 - self_weight) * sums[has] / counts[has]
    return out


def neighbour_counts(rows, cols, groups=None) -> np.ndarray:
    """How many scored 8-neighbours each patch has in its group (0: the context step leaves it
    alone, so its score is the patch's own). int64 (N,)."""
    return _neighbour_sums(np.zeros(len(np.asarray(rows))), rows, cols, groups)[1].astype(np.int64)


#: a slide's baseline is this quantile of its context logits: the level of its least IDC-like tissue
BASELINE_QUANTILE = 0.1
#: slides (patients) with fewer scored patches keep their logits: too few for a quantile
BASELINE_MIN_PATCHES = 10


def with_baseline(z, groups=None, weight: float = 0.0, reference: float = 0.0) -> np.ndarray:
    """``z + weight * (reference - baseline)`` per group (slide) whose baseline, its
    :data:`BASELINE_QUANTILE` of ``z``, is below ``reference`` (the typical baseline of the patients
    the step was fitted on): a slide whose tissue all scores low, as under a pale stain, is lifted
    by ``weight`` of the gap. A slide whose baseline is above the reference is left alone: that is
    as often a slide of mostly tumour as a darker stain, and lowering it would hide the tumour.
    Groups of fewer than :data:`BASELINE_MIN_PATCHES` patches are unchanged. float64 (N,)."""
    z = np.asarray(z, np.float64)
    if not weight or not len(z):
        return z
    group_index = _group_index(groups, len(z))
    out = z.copy()
    for g in np.unique(group_index):
        idx = np.flatnonzero(group_index == g)
        if len(idx) >= BASELINE_MIN_PATCHES:
            out[idx] += weight * max(reference - np.quantile(z[idx], BASELINE_QUANTILE), 0.0)
    return out


def with_context(
    prob, rows, cols, groups=None, self_weight: float = CONTEXT_SELF_WEIGHT, baseline: tuple[float, float] = (0.0, 0.0)
) -> np.ndarray:
    """Final IDC probabilities from calibrated per-patch ones: :func:`mix_neighbours` on their
    logits, then :func:`with_baseline` (``baseline``: its weight and reference, on the calibrated
    scale). Temperature and offset are shared, so this equals calibrating the final raw logits."""
    if self_weight >= 1.0 and not baseline[0]:
        return np.asarray(prob, np.float32)
    return sigmoid(with_baseline(mix_neighbours(logit(prob), rows, cols, groups, self_weight), groups, *baseline))
