"""A picture of a tiling: the thumbnail, the tissue mask, and the tissue patches of the grid."""

from __future__ import annotations

import cv2
import numpy as np

from .tiler import SlidePlan


def render_preview(plan: SlidePlan, cols: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """RGB image: glass dimmed, tissue in its colours, every tissue patch outlined in green."""
    if plan.thumbnail is None:
        raise ValueError("a slim plan has no thumbnail to draw on")
    thumb = plan.thumbnail.copy()
    mask = plan.tissue.mask
    thumb[~mask] = (thumb[~mask] * 0.45 + 40).astype(np.uint8)
    # draw the grid at a size where 50 px patches are visible: at least 4 px per patch
    ds = plan.tissue.downsample
    patch0 = plan.grid.level0_patch_size
    zoom = max(1.0, 4.0 * ds / patch0)
    if zoom > 1:
        thumb = cv2.resize(thumb, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_NEAREST)
    x, y = plan.grid.level0_xy(cols, rows)
    scale = zoom / ds
    overlay = thumb.copy()
    for x0, y0 in zip(x, y):
        p0 = (int(x0 * scale), int(y0 * scale))
        p1 = (int((x0 + patch0) * scale) - 1, int((y0 + patch0) * scale) - 1)
        cv2.rectangle(overlay, p0, p1, (0, 200, 0), 1)
    return cv2.addWeighted(overlay, 0.7, thumb, 0.3, 0)


def write_png(path, rgb: np.ndarray) -> None:
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"{path}: cannot write PNG")
