"""Rebuild a patient's slide from its Kaggle patch folder as a pyramidal, tiled, JPEG TIFF.

The TIFF is a "generic tiled TIFF" that OpenSlide opens: one IFD per level, finest first, 512 px
JPEG tiles (YCbCr 4:4:4), the mpp in the resolution tags (pixels per centimetre). Without
``scan_mpp`` the slide is written at the dataset's own 4.0 µm/px with levels 1/4/16 downsampled.
With ``scan_mpp=0.25`` it is written as a 40x scan would look: level 0 is the 2.5x image upsampled
16x (nearest neighbour, so the 2.5x pixels come back exactly by area averaging), levels 1/4/16.

The ground-truth mask is a PNG at patch resolution (one pixel per 50x50 patch): 0 no patch,
128 no IDC, 255 IDC.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import imagecodecs
import numpy as np
import tifffile

from idcmap.errors import InputError

from .kaggle import KAGGLE_MPP, KaggleFolderReader

TILE = 512
MASK_VALUES = {-1: 0, 0: 128, 1: 255}


def _level_image(base: np.ndarray, factor: float) -> np.ndarray:
    h, w = base.shape[:2]
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    return cv2.resize(base, size, interpolation=cv2.INTER_AREA)


def write_pyramid(
    path, base: np.ndarray, mpp: float, upsample: int = 1, downsamples=(1, 4, 16), quality: int = 90
) -> list[tuple[int, int]]:
    """Write ``base`` (upsampled ``upsample`` times by pixel repetition) as a JPEG-tiled pyramid.

    Level ``i`` is ``base`` scaled by ``upsample / downsamples[i]``. Upsampled levels are produced
    tile by tile, so the full-size level never exists in memory. Returns the level sizes.
    """
    h0, w0 = base.shape[0] * upsample, base.shape[1] * upsample
    sizes = []
    with tifffile.TiffWriter(str(path), bigtiff=h0 * w0 * 3 > 2**31) as tif, ThreadPoolExecutor(2) as pool:
        for i, ds in enumerate(downsamples):
            factor = upsample / ds
            if factor >= 1 and float(factor).is_integer():
                rep, img = int(factor), base
            else:
                rep, img = 1, _level_image(base, factor)
            if TILE % rep:
                raise ValueError(f"upsample factor {rep} must divide the tile size {TILE}")
            lw, lh = img.shape[1] * rep, img.shape[0] * rep
            sizes.append((lw, lh))
            white = imagecodecs.jpeg8_encode(np.full((TILE, TILE, 3), 255, np.uint8), level=quality, subsampling="444")

            def encode(ty_tx, img=img, rep=rep, white=white):
                s = TILE // rep
                src = img[ty_tx[0] * s : (ty_tx[0] + 1) * s, ty_tx[1] * s : (ty_tx[1] + 1) * s]
                if (src == 255).all():  # background: one shared encoding
                    return white
                tile = np.full((TILE, TILE, 3), 255, np.uint8)
                tile[: src.shape[0] * rep, : src.shape[1] * rep] = src.repeat(rep, 0).repeat(rep, 1)
                return imagecodecs.jpeg8_encode(tile, level=quality, subsampling="444")

            grid = [(ty, tx) for ty in range(-(-lh // TILE)) for tx in range(-(-lw // TILE))]
            level_mpp = mpp * ds  # mpp is that of level 0
            res = 1e4 / level_mpp  # pixels per centimetre
            tif.write(
                pool.map(encode, grid),
                shape=(lh, lw, 3),
                dtype=np.uint8,
                tile=(TILE, TILE),
                compression="jpeg",
                photometric="ycbcr",
                subsampling=(1, 1),
                resolution=(res, res),
                resolutionunit="CENTIMETER",
                subfiletype=0 if i == 0 else 1,
                metadata=None,
                description=f"idcmap build-slide level {i} mpp={level_mpp:g}",
            )
    return sizes


def build_slide(
    patient_dir, out_tiff, mask_png=None, scan_mpp: float | None = None, quality: int = 90, fade: float = 0.0
) -> dict:
    """Rebuild one patient's slide; returns a summary dict (sizes, mpp, patch counts). ``fade``
    blends every pixel that share of the way to white (a paler section, for robustness checks)."""
    reader = KaggleFolderReader(patient_dir)
    w, h = reader.dimensions
    base = reader.read_region(0, 0, 0, w, h)
    if fade:
        base = (255.0 - (255.0 - base) * (1.0 - fade)).round().astype(np.uint8)
    if scan_mpp is None:
        mpp, upsample = KAGGLE_MPP, 1
    else:
        ratio = KAGGLE_MPP / scan_mpp
        if abs(ratio - round(ratio)) > 1e-6 or round(ratio) < 1:
            raise InputError(f"--scan-mpp must divide {KAGGLE_MPP:g} by a whole number (e.g. 0.25, 0.5, 1)")
        upsample, mpp = round(ratio), scan_mpp
    Path(out_tiff).parent.mkdir(parents=True, exist_ok=True)
    sizes = write_pyramid(out_tiff, base, mpp, upsample, quality=quality)
    labels = reader.label_map()
    if mask_png is not None:
        mask = np.zeros(labels.shape, np.uint8)
        for value, grey in MASK_VALUES.items():
            mask[labels == value] = grey
        cv2.imwrite(str(mask_png), mask)
    return {
        "patient_id": reader.patient_id,
        "level_dimensions": sizes,
        "mpp": mpp,
        "patches": int((labels >= 0).sum()),
        "idc_patches": int((labels == 1).sum()),
    }
