"""Ordinary images (PNG, JPEG, ...) read whole with OpenCV as a one-level slide."""

from __future__ import annotations

import cv2
import numpy as np

from .reader import SlideError, SlideReader

#: an image read whole is decoded into memory: refuse (and OpenCV refuses) more than 2^30 pixels
MAX_IMAGE_PIXELS = 1 << 30


def png_header_size(head: bytes) -> tuple[int, int] | None:
    """(width, height) from the first 24 bytes of a PNG (its IHDR chunk); None if not a PNG."""
    if head[:8] != b"\x89PNG\r\n\x1a\n" or len(head) < 24:
        return None
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def png_size(path) -> tuple[int, int] | None:
    """(width, height) of a PNG file without decoding it; None if it is not a PNG."""
    with open(path, "rb") as f:
        return png_header_size(f.read(24))


class ImageReader(SlideReader):
    format = "image"

    def __init__(self, path):
        super().__init__(path)
        size = png_size(path)  # check the declared size before decoding anything
        if size is not None:
            w, h = size
            if w * h > MAX_IMAGE_PIXELS:
                raise SlideError(
                    path,
                    f"PNG declares {w} x {h} px, more than {MAX_IMAGE_PIXELS:,} px "
                    "an ordinary image may have; convert it to a tiled pyramidal TIFF",
                )
        img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise SlideError(path, "OpenCV cannot decode it as an image")
        if img.dtype != np.uint8:
            raise SlideError(path, f"unsupported pixel type {img.dtype} (need 8-bit RGB)")
        if img.ndim == 2 or img.shape[2] == 1:
            raise SlideError(path, "grayscale image: need 8-bit RGB (H&E colour)")
        if img.shape[2] == 4:
            alpha = img[..., 3:] / 255.0
            img = (img[..., :3] * alpha + 255 * (1 - alpha)).astype(np.uint8)
        self._img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)

    @property
    def level_dimensions(self):
        return [(self._img.shape[1], self._img.shape[0])]

    def _read(self, level, lx, ly, w, h):
        return self._img[ly : ly + h, lx : lx + w]
