"""Plan a slide (level, tissue, regions) and cut its tissue patches region by region.

Only one region's pixels are in memory at a time, and a region is bounded in level pixels, so peak
memory does not depend on the slide's size. Patches the thumbnail shows no tissue near are never
measured, and regions without such patches never read.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, fields, replace

import cv2
import numpy as np

from .defaults import DEFAULT_MIN_TISSUE, MAX_INK_FRACTION, PATCH_SIZE
from .grid import PatchGrid, neighbourhoods
from .reader import SlideError, SlideReader
from .resolution import DEFAULT_TARGET_MPP, LevelChoice, choose_level
from .tissue import TissueMask


@dataclass(frozen=True)
class TilingSpec:
    target_mpp: float = DEFAULT_TARGET_MPP
    patch_size: int = PATCH_SIZE
    stride: int = PATCH_SIZE
    min_tissue: float = DEFAULT_MIN_TISSUE  # minimum tissue fraction of a patch
    mpp: float | None = None  # overrides the slide's own mpp
    thumbnail_size: int = 1024  # long side of the thumbnail tissue is fitted on
    region_size: int = 512  # most level pixels per side read at once


@dataclass
class SlidePlan:
    """Everything needed to cut a slide's patches, apart from the open slide itself."""

    spec: TilingSpec
    level: LevelChoice
    grid: PatchGrid
    tissue: TissueMask
    thumbnail: np.ndarray | None
    candidates: np.ndarray  # bool (rows, cols): the patches whose thumbnail box touches tissue
    regions: list[tuple[int, int, int, int]] = field(default_factory=list)

    def slim(self, regions=None) -> SlidePlan:
        """A copy without the thumbnail and mask images (cheap to send to a worker)."""
        return replace(
            self,
            thumbnail=None,
            tissue=replace(self.tissue, mask=np.zeros((0, 0), bool)),
            regions=list(self.regions if regions is None else regions),
        )


@dataclass
class PatchBatch:
    """The tissue patches of one region."""

    cols: np.ndarray  # int32 (N,)
    rows: np.ndarray  # int32 (N,)
    x: np.ndarray  # int64 (N,) level-0 left
    y: np.ndarray  # int64 (N,) level-0 top
    tissue_fraction: np.ndarray  # float32 (N,)
    pixels: np.ndarray  # uint8 (N, patch, patch, 3) RGB; 6 channels with each patch's neighbourhood

    def __len__(self) -> int:
        return len(self.cols)

    def __getitem__(self, keep) -> PatchBatch:
        return PatchBatch(*(getattr(self, f.name)[keep] for f in fields(self)))


def plan_slide(reader: SlideReader, spec: TilingSpec = TilingSpec()) -> SlidePlan:
    """Choose the level, fit the tissue mask on a thumbnail, list the regions that hold tissue."""
    level = choose_level(reader, spec.target_mpp, spec.mpp)
    grid = PatchGrid(*reader.dimensions, level.downsample0, spec.patch_size, spec.stride)
    w, h = grid.target_size
    if w < spec.patch_size / 2 or h < spec.patch_size / 2:
        raise SlideError(
            reader.path,
            f"slide is only {w}x{h} px at {spec.target_mpp:g} µm/px, smaller than half a {spec.patch_size} px patch",
        )
    thumbnail, thumb_ds = reader.get_thumbnail(spec.thumbnail_size)
    tissue = TissueMask.from_thumbnail(thumbnail, thumb_ds)
    x0, y0 = grid.level0_xy(np.arange(grid.cols), np.arange(grid.rows))
    (dx, dy), ps = level.downsample0, spec.patch_size
    candidates = tissue.touches(x0[None, :], y0[:, None], x0[None, :] + ps * dx, y0[:, None] + ps * dy)
    per_side = max(1, int(spec.region_size / (spec.stride * max(level.scale))))
    regions = [(c0, r0, c1, r1) for c0, r0, c1, r1 in grid.regions(per_side) if candidates[r0:r1, c0:c1].any()]
    return SlidePlan(spec, level, grid, tissue, thumbnail, candidates, regions)


def read_region_patches(reader: SlideReader, plan: SlidePlan, region: tuple[int, int, int, int]) -> PatchBatch:
    """Read one region at the target resolution and cut its tissue patches.

    Only the bounding box of the region's candidate patches is read."""
    spec, grid, level = plan.spec, plan.grid, plan.level
    ps, st = spec.patch_size, spec.stride
    c0, r0, _, _ = region
    rr, cc = np.nonzero(plan.candidates[r0 : region[3], c0 : region[2]])
    if not len(rr):
        empty = np.zeros(0, np.int32)
        return PatchBatch(
            empty,
            empty,
            empty.astype(np.int64),
            empty.astype(np.int64),
            empty.astype(np.float32),
            np.zeros((0, ps, ps, 3), np.uint8),
        )
    c0, r0 = c0 + cc.min(), r0 + rr.min()
    rr, cc = rr - rr.min(), cc - cc.min()
    tw, th = cc.max() * st + ps, rr.max() * st + ps
    sx, sy = level.scale
    lw, lh = max(1, round(tw * sx)), max(1, round(th * sy))
    x0, y0 = grid.level0_xy(c0, r0)
    pixels = reader.read_region(level.level, int(x0), int(y0), lw, lh)
    if (lw, lh) != (tw, th):
        pixels = cv2.resize(pixels, (tw, th), interpolation=cv2.INTER_AREA)
    # the candidate patch windows, then the tissue fraction of each (one mask pass over all of them)
    windows = np.lib.stride_tricks.sliding_window_view(pixels, (ps, ps, 3))[::st, ::st, 0]
    stack = windows[rr, cc]
    tissue, ink = (m.reshape(len(stack), -1) for m in plan.tissue.threshold.masks(stack.reshape(-1, ps, 3)))
    fraction = (np.count_nonzero(tissue, axis=1) / float(ps * ps)).astype(np.float32)
    # pen marks over tissue: what is under them cannot be scored
    keep = (fraction >= spec.min_tissue) & (np.count_nonzero(ink, axis=1) <= MAX_INK_FRACTION * ps * ps)
    cols, rows = (cc[keep] + c0).astype(np.int32), (rr[keep] + r0).astype(np.int32)
    x, y = grid.level0_xy(cols, rows)
    return PatchBatch(cols, rows, x, y, fraction[keep], stack[keep])


def iter_patches(reader: SlideReader, plan: SlidePlan, cells: int = 0) -> Iterator[PatchBatch]:
    """The tissue patches of the slide (of the plan's regions), one region at a time.

    ``cells`` > 0: each patch beside its neighbourhood of ``cells`` x ``cells`` grid cells
    (:func:`~idcmap.slide_tiling.grid.neighbourhoods`: 6 channels; cells without a tissue patch are
    white), for a network that sees it; each region is then read with the cells around it."""
    margin = cells // 2
    if margin and plan.spec.stride != plan.spec.patch_size:
        raise ValueError(
            f"a {cells}x{cells} neighbourhood needs patches that tile without overlap (stride {plan.spec.patch_size})"
        )
    for c0, r0, c1, r1 in plan.regions:
        wide = (
            max(0, c0 - margin),
            max(0, r0 - margin),
            min(plan.grid.cols, c1 + margin),
            min(plan.grid.rows, r1 + margin),
        )
        batch = read_region_patches(reader, plan, wide)
        if margin:
            own = (batch.cols >= c0) & (batch.cols < c1) & (batch.rows >= r0) & (batch.rows < r1)
            zeros = np.zeros(len(batch), np.int8)
            batch = replace(batch[own], pixels=neighbourhoods(batch.pixels, batch.rows, batch.cols, zeros, cells, own))
        if len(batch):
            yield batch
