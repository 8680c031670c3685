"""Histology augmentation in TensorFlow, vectorised over a batch of RGB float images in [0, 255].

Patches have no orientation, so every one of the 8 symmetries of the square (flips and 90°
rotations) is equally likely. Colour varies between labs and slides through staining, so each
patch also gets a random brightness, contrast, saturation and per-channel (stain) gain.
"""
from __future__ import annotations

import tensorflow as tf


def dihedral(x: tf.Tensor) -> tf.Tensor:
    """Random flip left/right, flip up/down and transpose per image: the 8 dihedral symmetries."""
    n = tf.shape(x)[0]

    def maybe(op, y):
        pick = tf.random.uniform([n, 1, 1, 1]) < 0.5
        return tf.where(pick, op(y), y)

    x = maybe(lambda y: tf.reverse(y, [2]), x)
    x = maybe(lambda y: tf.reverse(y, [1]), x)
    return maybe(lambda y: tf.transpose(y, [0, 2, 1, 3]), x)


def colour_jitter(x: tf.Tensor, brightness=12.0, contrast=0.15, saturation=0.15,
                  stain=0.06) -> tf.Tensor:
    """Per-image brightness shift, contrast and saturation scale and per-channel gain."""
    n = tf.shape(x)[0]
    u = lambda shape, a: tf.random.uniform(shape, -a, a)  # noqa: E731
    grey = tf.reduce_mean(x, axis=-1, keepdims=True)
    x = grey + (x - grey) * (1.0 + u([n, 1, 1, 1], saturation))
    mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
    x = mean + (x - mean) * (1.0 + u([n, 1, 1, 1], contrast))
    x = x * (1.0 + u([n, 1, 1, 3], stain)) + u([n, 1, 1, 1], brightness)
    return tf.clip_by_value(x, 0.0, 255.0)


def augment(x: tf.Tensor, colour_strength: float = 1.0) -> tf.Tensor:
    """The training augmentation: symmetries then colour jitter (float32 pixels in [0, 255]).

    ``colour_strength`` scales every colour jitter range (1.0: the defaults of colour_jitter).
    """
    s = colour_strength
    return colour_jitter(dihedral(x), brightness=12.0 * s, contrast=0.15 * s, saturation=0.15 * s,
                         stain=0.06 * s)
