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


def neighbourhoods(images: np.ndarray, rows, cols, groups, cells: int = 3, keep=None, chunk: int = 2048) -> np.ndarray:
    """Each patch beside its neighbourhood, (N, S, S, 6) uint8: the patch, then the ``cells`` x
    ``cells`` grid cells around it on its group's grid (the cells with no patch white, as background
    is) averaged down ``cells`` times to SxS. ``rows``/``cols`` are grid positions of patches that
    tile without overlap; groups (patients, slides) are never neighbours. ``keep`` (a boolean mask):
    only those patches' are returned, every patch still serving as a neighbour."""
    size, half = images.shape[1], cells // 2
    at = np.arange(len(images)) if keep is None else np.flatnonzero(keep)
    out = np.full((len(at), size, size, 6), 255, np.uint8)
    out[..., :3] = images[at]
    if not len(at):
        return out
    # each patch's neighbours by a sorted code of (group, row, col): -1 where a cell holds none
    group = np.unique(np.asarray(groups), return_inverse=True)[1].astype(np.int64).ravel()
    row, col = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
    top, left = row.min() - half, col.min() - half
    height, width = row.max() - top + cells, col.max() - left + cells
    code = lambda g, r, c: (g * height + r - top) * width + c - left  # noqa: E731
    codes = code(group, row, col)
    order = np.argsort(codes, kind="stable")
    codes = codes[order]
    offsets = [(dr, dc) for dr in range(cells) for dc in range(cells)]
    neighbour = np.empty((len(at), len(offsets)), np.int64)
    for k, (dr, dc) in enumerate(offsets):
        want = code(group[at], row[at] + dr - half, col[at] + dc - half)
        pos = np.maximum(np.searchsorted(codes, want, side="right") - 1, 0)  # the last such patch
        neighbour[:, k] = np.where(codes[pos] == want, order[pos], -1)
    if size % cells == 0:  # each cell's share of the average is its own patch averaged down alone
        part = size // cells
        strips = images[:, ::cells].astype(np.uint16 if cells**2 * 255 < 2**16 else np.uint32)
        for i in range(1, cells):  # strided sums: a reshaped sum is several times slower
            strips += images[:, i::cells]
        sums = strips[:, :, ::cells].copy()
        for i in range(1, cells):
            sums += strips[:, :, i::cells]
        small = np.round(sums / cells**2).astype(np.uint8)
        for k, (dr, dc) in enumerate(offsets):
            j = neighbour[:, k]
            out[j >= 0, dr * part : (dr + 1) * part, dc * part : (dc + 1) * part, 3:] = small[j[j >= 0]]
        return out
    side = cells * size
    for start in range(0, len(at), chunk):
        near = neighbour[start : start + chunk]
        canvas = np.full((len(near), side, side, 3), 255, np.uint8)
        for k, (dr, dc) in enumerate(offsets):
            j = near[:, k]
            canvas[j >= 0, dr * size : (dr + 1) * size, dc * size : (dc + 1) * size] = images[j[j >= 0]]
        small = canvas.reshape(len(near), size, cells, size, cells, 3).mean(axis=(2, 4))
        out[start : start + len(near), ..., 3:] = np.round(small).astype(np.uint8)
    return out
