"""The patch grid at the target resolution, and its mapping to level-0 pixels.

The grid starts at the slide's top-left corner and covers the whole slide: patch (col, row) covers
target pixels [col*stride, col*stride + patch) x [row*stride, row*stride + patch). The last column
and row may overhang the slide's right and bottom edge; the overhang is white background (the same
white padding as a partial Kaggle edge patch gets), and counts as non-tissue.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .defaults import PATCH_SIZE


@dataclass(frozen=True)
class PatchGrid:
    width0: int  # slide size, level-0 pixels
    height0: int
    downsample0: tuple[float, float]  # level-0 pixels per target pixel (x, y)
    patch_size: int = PATCH_SIZE
    stride: int = PATCH_SIZE

    def __post_init__(self):
        if self.patch_size < 1 or self.stride < 1:
            raise ValueError("patch size and stride must be positive")

    @property
    def target_size(self) -> tuple[int, int]:
        """Slide size in target pixels (width, height)."""
        return (
            math.ceil(self.width0 / self.downsample0[0] - 1e-6),
            math.ceil(self.height0 / self.downsample0[1] - 1e-6),
        )

    def _count(self, extent: int) -> int:
        return 1 + max(0, math.ceil((extent - self.patch_size) / self.stride))

    @property
    def cols(self) -> int:
        return self._count(self.target_size[0])

    @property
    def rows(self) -> int:
        return self._count(self.target_size[1])

    @property
    def level0_patch_size(self) -> float:
        return self.patch_size * self.downsample0[0]

    def level0_xy(self, cols, rows) -> tuple[np.ndarray, np.ndarray]:
        """Level-0 top-left pixel of patches (vectorised over col/row arrays)."""
        cols, rows = np.asarray(cols), np.asarray(rows)
        return (
            np.round(cols * self.stride * self.downsample0[0]).astype(np.int64),
            np.round(rows * self.stride * self.downsample0[1]).astype(np.int64),
        )

    def regions(self, patches_per_side: int):
        """Blocks of up to ``patches_per_side``^2 patches: (col0, row0, col1, row1), end exclusive."""
        n = max(1, patches_per_side)
        for r0 in range(0, self.rows, n):
            for c0 in range(0, self.cols, n):
                yield c0, r0, min(c0 + n, self.cols), min(r0 + n, self.rows)


def neighbourhoods(images: np.ndarray, rows, cols, groups, cells: int = 3, chunk: int = 2048) -> np.ndarray:
    """Each patch beside its neighbourhood, (N, S, S, 6) uint8: the patch, then the ``cells`` x
    ``cells`` grid cells around it on its group's grid (the cells with no patch white, as background
    is) averaged down ``cells`` times to SxS. ``rows``/``cols`` are grid positions of patches that
    tile without overlap; groups (patients, slides) are never neighbours."""
    size = images.shape[1]
    keys = list(zip(*(np.asarray(a).tolist() for a in (groups, rows, cols))))
    where = {key: i for i, key in enumerate(keys)}
    out = np.empty((len(images), size, size, 6), np.uint8)
    out[..., :3] = images
    side, half = cells * size, cells // 2
    for start in range(0, len(images), chunk):
        at = keys[start : start + chunk]
        canvas = np.full((len(at), side, side, 3), 255, np.uint8)
        for dr in range(cells):
            for dc in range(cells):
                idx = np.array([where.get((g, r + dr - half, c + dc - half), -1) for g, r, c in at])
                top, left = dr * size, dc * size
                canvas[idx >= 0, top : top + size, left : left + size] = images[idx[idx >= 0]]
        small = canvas.reshape(len(at), size, cells, size, cells, 3).mean(axis=(2, 4))
        out[start : start + len(at), ..., 3:] = np.round(small).astype(np.uint8)
    return out
