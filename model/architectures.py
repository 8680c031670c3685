"""Network architectures for 50x50x3 RGB patches, and their cost in FLOPs per patch.

Every network takes normalised float32 input (N, 50, 50, 3) and outputs softmax probabilities
(N, 2) of (no IDC, IDC). Normalisation and uint8 handling live outside, in the bundle's scoring
function, so the same network serves Keras and ONNX.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from idcmap.errors import InputError
from idcmap.slide_tiling import PATCH_SIZE

if TYPE_CHECKING:  # keras is imported where a network is built: the command line stays quick to start
    import keras

INPUT_SHAPE = (PATCH_SIZE, PATCH_SIZE, 3)


def seed_cnn() -> keras.Model:
    """The reference network, exactly as specified (145.5 MFLOP per patch)."""
    import keras
    from keras import layers

    conv = dict(kernel_size=3, activation="relu", kernel_initializer="he_uniform", padding="same")
    dense = dict(activation="relu", kernel_initializer="he_uniform")
    return keras.Sequential(
        [
            keras.Input(INPUT_SHAPE),
            layers.Conv2D(32, **conv),
            layers.BatchNormalization(),
            layers.Conv2D(32, **conv),
            layers.MaxPooling2D(2),
            layers.BatchNormalization(),
            layers.Dropout(0.3),
            layers.Conv2D(64, **conv),
            layers.BatchNormalization(),
            layers.Conv2D(64, **conv),
            layers.BatchNormalization(),
            layers.MaxPooling2D(2),
            layers.Dropout(0.3),
            layers.Conv2D(128, **conv),
            layers.Flatten(),
            layers.Dense(128, **dense),
            layers.BatchNormalization(),
            layers.Dense(64, **dense),
            layers.BatchNormalization(),
            layers.Dense(64, **dense),
            layers.Dropout(0.3),
            layers.Dense(24, **dense),
            layers.Dense(2, activation="softmax"),
        ],
        name="seed_cnn",
    )


def _sep_block(x, filters: int, name: str):
    """Separable 3x3 conv, batch norm, ReLU."""
    from keras import layers

    x = layers.SeparableConv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_sep")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def _idcnet_trunk(x, width: int, depth: int = 2, prefix: str = ""):
    """idcnet's layers up to the global average pooling, on ``x``."""
    from keras import layers

    x = layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"{prefix}stem_conv")(x)
    x = layers.BatchNormalization(name=f"{prefix}stem_bn")(x)
    x = layers.ReLU(name=f"{prefix}stem_relu")(x)
    x = _sep_block(x, width, f"{prefix}s1a")
    for stage, mult in enumerate((2, 4, 8), start=2):
        x = layers.MaxPooling2D(2, name=f"{prefix}pool{stage}")(x)
        for block in "abcdefgh"[:depth]:
            x = _sep_block(x, width * mult, f"{prefix}s{stage}{block}")
    return layers.GlobalAveragePooling2D(name=f"{prefix}gap")(x)


def idcnet(width: int = 32, dropout: float = 0.3, depth: int = 2, name: str = "idcnet") -> keras.Model:
    """The optimised network: a full conv stem, then separable-conv stages, global average pooling.

    Stages at 50, 25, 12 and 6 pixels with width, 2x, 4x, 8x channels, ``depth`` separable blocks in
    each of the last three; the Flatten + wide Dense head of seed_cnn is replaced by global average
    pooling, so the cost is ~1/4 of seed_cnn's.
    """
    import keras
    from keras import layers

    inp = keras.Input(INPUT_SHAPE)
    x = layers.Dropout(dropout, name="dropout")(_idcnet_trunk(inp, width, depth))
    out = layers.Dense(2, activation="softmax", name="probs")(x)
    return keras.Model(inp, out, name=name)


def idcnet_ctx(width: int = 32, context_width: int = 16, dropout: float = 0.3, name: str = "idcnet_ctx") -> keras.Model:
    """idcnet on the patch beside a narrower idcnet on its neighbourhood (input (N, 50, 50, 6): the
    patch, then its grid cells around averaged down, :func:`idcmap.model.data.neighbourhoods`); the
    two pooled feature vectors are concatenated before the dropout and the softmax."""
    import keras
    from keras import layers

    inp = keras.Input((PATCH_SIZE, PATCH_SIZE, 6))
    patch = _idcnet_trunk(inp[..., :3], width)
    around = _idcnet_trunk(inp[..., 3:], context_width, prefix="ctx_")
    x = layers.Dropout(dropout, name="dropout")(layers.Concatenate(name="features")([patch, around]))
    out = layers.Dense(2, activation="softmax", name="probs")(x)
    return keras.Model(inp, out, name=name)


def idcnet_ctx5(width: int = 32) -> keras.Model:
    """idcnet_ctx on the 5x5 grid cells around each patch (1 mm at 4 um/px) instead of 3x3."""
    return idcnet_ctx(width=width, name="idcnet_ctx5")


def idcnet_deep(width: int = 32) -> keras.Model:
    """idcnet with three separable blocks per stage instead of two."""
    return idcnet(width=width, depth=3, name="idcnet_deep")


ARCHITECTURES: dict[str, Callable[..., keras.Model]] = {
    "seed_cnn": seed_cnn,
    "idcnet": idcnet,
    "idcnet_deep": idcnet_deep,
    "idcnet_ctx": idcnet_ctx,
    "idcnet_ctx5": idcnet_ctx5,
}
#: networks that see each patch's neighbourhood beside it (6 input channels): its side in grid cells
CONTEXT_ARCHS = {"idcnet_ctx": 3, "idcnet_ctx5": 5}


def build(name: str, width: int | None = None) -> keras.Model:
    """A fresh network by name; ``width`` (idcnet's kinds only) sets its stem channel count."""
    if name not in ARCHITECTURES:
        raise InputError(f"unknown architecture {name!r}; choose one of {sorted(ARCHITECTURES)}")
    if width is None:
        return ARCHITECTURES[name]()
    if name == "seed_cnn":
        raise InputError(f"{name} has a fixed width; --width applies to idcnet's kinds only")
    return ARCHITECTURES[name](width=width)


def flops_per_patch(model: keras.Model) -> int:
    """Multiply-adds x 2 of the convolutions and dense layers for one patch.

    Batch norm, activations, pooling and the softmax are left out (they are a few percent at most).
    """
    from keras import layers

    total = 0
    for layer in model.layers:
        if isinstance(layer, (layers.Conv2D, layers.DepthwiseConv2D, layers.SeparableConv2D, layers.Dense)):
            out_shape = layer.output.shape  # (None, [H, W,] C)
            in_ch = layer.input.shape[-1]
            positions = 1
            for d in out_shape[1:-1]:
                positions *= d
            out_ch = out_shape[-1]
            if isinstance(layer, layers.SeparableConv2D):
                kh, kw = layer.kernel_size
                macs = positions * (kh * kw * in_ch + in_ch * out_ch)
            elif isinstance(layer, layers.DepthwiseConv2D):
                kh, kw = layer.kernel_size
                macs = positions * kh * kw * out_ch
            elif isinstance(layer, layers.Conv2D):
                kh, kw = layer.kernel_size
                macs = positions * kh * kw * in_ch * out_ch
            else:
                macs = positions * in_ch * out_ch
            total += 2 * macs
    return int(total)


#: optimiser settings (Adam); seed_cnn's constant 1e-4 is part of its specification
TRAINING: dict[str, dict] = {
    "seed_cnn": {"lr": 1e-4, "schedule": "constant"},
    "idcnet": {"lr": 2e-3, "schedule": "cosine"},
    "idcnet_deep": {"lr": 2e-3, "schedule": "cosine"},
    "idcnet_ctx": {"lr": 2e-3, "schedule": "cosine"},
    "idcnet_ctx5": {"lr": 2e-3, "schedule": "cosine"},
}
