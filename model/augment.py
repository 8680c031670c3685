"""Histology augmentation in TensorFlow, vectorised over a batch of RGB float images in [0, 255].

Patches have no orientation, so every one of the 8 symmetries of the square (flips and 90°
rotations) is equally likely. Colour varies between labs and slides through staining, so each
patch also gets its haematoxylin and eosin changed independently in stain space (the "HED"
augmentation of Tellez et al. 2019), a gamma, and a random brightness, contrast, saturation and
per-channel gain. Scanning and storage add their own artefacts: a little defocus blur and JPEG
compression (at 4 µm/px an 8x8 JPEG block is a third of a patch).
"""

from __future__ import annotations

import tensorflow as tf

from .stain import HED_FROM_RGB, RGB_FROM_HED

#: HED jitter at strength 1: each of H and E scaled by U(1 - s, 1 + s) and shifted by U(-b, b) in
#: concentration (OD units). The scale covers the stain differences the stain-shift benchmark
#: applies (x0.5 to x1.5); fixed before any cross-validation, not tuned on it.
HED_SCALE, HED_SHIFT = 0.5, 0.05
#: gamma at strength 1: I' = 255 (I / 255) ^ exp(U(-g, g))
GAMMA = 0.25
#: artefacts at strength 1: half the patches JPEG-compressed at a quality of U(JPEG_MIN_QUALITY, 95);
#: each patch blended towards a Gaussian blur of sigma BLUR_SIGMA px by U(0, 1). The lowest quality
#: covers the stain-shift benchmark's JPEG q50; fixed before any cross-validation, not tuned on it.
JPEG_P, JPEG_MIN_QUALITY, BLUR_SIGMA = 0.5, 40, 1.0


def dihedral(x: tf.Tensor) -> tf.Tensor:
    """Random flip left/right, flip up/down and transpose per image: the 8 dihedral symmetries."""
    n = tf.shape(x)[0]

    def maybe(op, y):
        pick = tf.random.uniform([n, 1, 1, 1]) < 0.5
        return tf.where(pick, op(y), y)

    x = maybe(lambda y: tf.reverse(y, [2]), x)
    x = maybe(lambda y: tf.reverse(y, [1]), x)
    return maybe(lambda y: tf.transpose(y, [0, 2, 1, 3]), x)


def colour_jitter(x: tf.Tensor, brightness=12.0, contrast=0.15, saturation=0.15, stain=0.06) -> tf.Tensor:
    """Per-image brightness shift, contrast and saturation scale and per-channel gain."""
    n = tf.shape(x)[0]
    u = lambda shape, a: tf.random.uniform(shape, -a, a)  # noqa: E731
    grey = tf.reduce_mean(x, axis=-1, keepdims=True)
    x = grey + (x - grey) * (1.0 + u([n, 1, 1, 1], saturation))
    mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
    x = mean + (x - mean) * (1.0 + u([n, 1, 1, 1], contrast))
    x = x * (1.0 + u([n, 1, 1, 3], stain)) + u([n, 1, 1, 1], brightness)
    return tf.clip_by_value(x, 0.0, 255.0)


def hed_jitter(x: tf.Tensor, scale: float = HED_SCALE, shift: float = HED_SHIFT) -> tf.Tensor:
    """Per image, H and E concentrations times U(1 - scale, 1 + scale) plus U(-shift, shift);
    the residual stain is kept (:func:`idcmap.model.stain.restain` is the same map in numpy)."""
    n = tf.shape(x)[0]
    conc = tf.linalg.matmul(-tf.math.log((x + 1.0) / 256.0), tf.constant(HED_FROM_RGB, tf.float32))
    keep = tf.ones([n, 1, 1, 1])
    gain = tf.concat([tf.random.uniform([n, 1, 1, 2], 1.0 - scale, 1.0 + scale), keep], axis=-1)
    bias = tf.concat([tf.random.uniform([n, 1, 1, 2], -shift, shift), 0.0 * keep], axis=-1)
    od = tf.linalg.matmul(conc * gain + bias, tf.constant(RGB_FROM_HED, tf.float32))
    return tf.clip_by_value(256.0 * tf.exp(-od) - 1.0, 0.0, 255.0)


def random_gamma(x: tf.Tensor, gamma: float = GAMMA) -> tf.Tensor:
    """Per image, I' = 255 (I / 255) ^ exp(U(-gamma, gamma))."""
    g = tf.exp(tf.random.uniform([tf.shape(x)[0], 1, 1, 1], -gamma, gamma))
    return 255.0 * tf.pow(tf.clip_by_value(x / 255.0, 1e-6, 1.0), g)


def blur(x: tf.Tensor, sigma: float = BLUR_SIGMA) -> tf.Tensor:
    """Per image, a blend between the image and its Gaussian blur (``sigma`` px) by U(0, 1)."""
    r = max(1, int(round(3 * sigma)))
    g = tf.exp(-tf.square(tf.range(-r, r + 1, dtype=tf.float32)) / (2.0 * sigma * sigma))
    g = g / tf.reduce_sum(g)
    rows = tf.tile(tf.reshape(g, [-1, 1, 1, 1]), [1, 1, 3, 1])
    padded = tf.pad(x, [[0, 0], [r, r], [r, r], [0, 0]], mode="SYMMETRIC")
    smooth = tf.nn.depthwise_conv2d(padded, rows, [1, 1, 1, 1], "VALID")
    smooth = tf.nn.depthwise_conv2d(smooth, tf.transpose(rows, [1, 0, 2, 3]), [1, 1, 1, 1], "VALID")
    a = tf.random.uniform([tf.shape(x)[0], 1, 1, 1])
    return x + a * (smooth - x)


def jpeg(x: tf.Tensor, p: float = JPEG_P, min_quality: int = JPEG_MIN_QUALITY) -> tf.Tensor:
    """Per image, with probability ``p``, JPEG-compressed at a quality of U(min_quality, 95)."""
    n = tf.shape(x)[0]
    quality = tf.random.uniform([n], min_quality, 96, dtype=tf.int32)
    squeezed = tf.map_fn(
        lambda a: tf.image.adjust_jpeg_quality(a[0] / 255.0, a[1]) * 255.0, (x, quality), fn_output_signature=tf.float32
    )
    return tf.where(tf.random.uniform([n, 1, 1, 1]) < p, tf.reshape(squeezed, tf.shape(x)), x)


def augment(
    x: tf.Tensor, colour_strength: float = 1.0, stain_strength: float = 0.0, artefact_strength: float = 0.0
) -> tf.Tensor:
    """The training augmentation: symmetries, stain-space jitter and gamma, colour jitter, then
    scanning artefacts (float32 pixels in [0, 255]).

    ``colour_strength`` scales every colour jitter range (1.0: the defaults of colour_jitter);
    ``stain_strength`` scales the HED jitter and the gamma range (0: neither);
    ``artefact_strength`` scales the blur sigma and the JPEG share of patches (0: neither).
    Six channels are a patch and its neighbourhood (:func:`idcmap.model.data.neighbourhoods`):
    both get the same draw, side by side (blur and JPEG blocks reach 1-2 px across the seam).
    """
    x = dihedral(x)
    pair = x.shape[-1] == 6
    if pair:
        x = tf.concat([x[..., :3], x[..., 3:]], axis=2)
    if stain_strength > 0:
        x = random_gamma(hed_jitter(x, HED_SCALE * stain_strength, HED_SHIFT * stain_strength), GAMMA * stain_strength)
    s = colour_strength
    x = colour_jitter(x, brightness=12.0 * s, contrast=0.15 * s, saturation=0.15 * s, stain=0.06 * s)
    if artefact_strength > 0:
        x = jpeg(blur(x, BLUR_SIGMA * artefact_strength), min(1.0, JPEG_P * artefact_strength))
    return tf.concat(tf.split(x, 2, axis=2), axis=-1) if pair else x
