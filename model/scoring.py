"""The scoring function shared by training, export and inference: uint8 RGB -> class probabilities,
and the map from probabilities to calibrated IDC probabilities (temperature scaling)."""
from __future__ import annotations

import numpy as np

from slide_tiling import PATCH_SIZE

#: clip for probabilities before taking logits (float32 softmax saturates near 1e-7)
PROB_EPS = 1e-7


def normalise(x, normalisation: dict):
    """(x - mean) / std per RGB channel, on float32 pixel values in [0, 255]."""
    # numpy constants, not captured eager tensors: tf2onnx would turn those into graph inputs
    mean = np.asarray(normalisation["mean"], np.float32)
    std = np.asarray(normalisation["std"], np.float32)
    return (x - mean) / std


def scoring_function(model, normalisation: dict):
    """A ``tf.function``: uint8 (N, 50, 50, 3) RGB patches -> softmax probabilities (N, 2)."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([None, PATCH_SIZE, PATCH_SIZE, 3], tf.uint8, name="patches")])
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
    z = (idc_logit(probs) - float(offset)) / float(temperature)
    return (0.5 * (1.0 + np.tanh(0.5 * z))).astype(np.float32)
