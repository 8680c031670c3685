"""The one interface every slide reader implements, and the error they raise.

Coordinates follow OpenSlide: ``read_region(level, x, y, w, h)`` takes ``x, y`` in level-0 pixels
(the top-left corner) and ``w, h`` in pixels of ``level``. Pixels outside the slide come back white,
so a region that overhangs the right or bottom edge is padded with background.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import cv2
import numpy as np

from idcmap.errors import SlideError


class SlideReader(ABC):
    """A whole-slide image opened for reading. Use as a context manager or call ``close()``."""

    #: short format name shown by ``idcmap info`` ("aperio-svs", "tiff", "dicom", ...)
    format: str = "unknown"

    def __init__(self, path):
        self.path = Path(path)

    # --- metadata -------------------------------------------------------------------------------
    @property
    @abstractmethod
    def level_dimensions(self) -> list[tuple[int, int]]:
        """(width, height) of every level, level 0 (finest) first."""

    @property
    def level_downsamples(self) -> list[float]:
        w0 = self.level_dimensions[0][0]
        return [w0 / w for w, _ in self.level_dimensions]

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    @property
    def dimensions(self) -> tuple[int, int]:
        return self.level_dimensions[0]

    @property
    def mpp(self) -> tuple[float, float] | None:
        """Microns per pixel (x, y) at level 0, or None when the file does not say."""
        return None

    @property
    def objective_power(self) -> float | None:
        return None

    @property
    def vendor(self) -> str | None:
        return None

    # --- pixels ---------------------------------------------------------------------------------
    @abstractmethod
    def _read(self, level: int, lx: int, ly: int, w: int, h: int) -> np.ndarray:
        """Read a region that lies inside the level, ``lx, ly`` in pixels of ``level``.

        Returns (h, w, 3) uint8 RGB."""

    def read_region(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """RGB uint8 array of shape (h, w, 3); ``x, y`` level-0 pixels, ``w, h`` level pixels.

        The part outside the slide is white (255).
        """
        if not 0 <= level < self.level_count:
            raise ValueError(f"level {level} out of range 0..{self.level_count - 1}")
        ds = self.level_downsamples[level]
        lw, lh = self.level_dimensions[level]
        lx, ly = int(round(x / ds)), int(round(y / ds))
        out = np.full((h, w, 3), 255, np.uint8)
        x0, y0 = max(lx, 0), max(ly, 0)
        x1, y1 = min(lx + w, lw), min(ly + h, lh)
        if x1 > x0 and y1 > y0:
            try:
                pixels = self._read(level, x0, y0, x1 - x0, y1 - y0)
            except SlideError:
                raise
            except Exception as exc:  # codec errors, truncated files ...
                raise SlideError(
                    self.path, f"cannot read pixels at level {level} ({x0},{y0}): {type(exc).__name__}: {exc}"
                ) from exc
            out[y0 - ly : y1 - ly, x0 - lx : x1 - lx] = pixels
        return out

    def get_thumbnail(self, max_size: int = 1024) -> tuple[np.ndarray, float]:
        """A whole-slide RGB thumbnail whose long side is at most ``max_size`` (and at least half of
        it, or the whole slide).

        Returns (image, downsample) where downsample is level-0 pixels per thumbnail pixel.
        Reads the coarsest level whose long side is at least ``max_size / 2`` (a level between half
        and full size is used as it is: decoding the next finer one costs up to 16x the pixels),
        resized down to ``max_size`` when larger.
        """
        w0, h0 = self.dimensions
        scale = max(1.0, max(w0, h0) / max_size)
        level = max(i for i, ds in enumerate(self.level_downsamples) if ds <= 2 * scale)
        scale = max(scale, self.level_downsamples[level])
        lw, lh = self.level_dimensions[level]
        tw, th = max(1, round(w0 / scale)), max(1, round(h0 / scale))
        # Read in horizontal strips so a huge single-level slide never sits in memory whole.
        ds = self.level_downsamples[level]
        rows_per_strip = max(1, (32 << 20) // (lw * 3 * max(1, round(lh / th))))
        strips = []
        for t0 in range(0, th, rows_per_strip):
            t1 = min(th, t0 + rows_per_strip)
            l0, l1 = round(t0 * lh / th), max(round(t0 * lh / th) + 1, round(t1 * lh / th))
            strip = self.read_region(level, 0, round(l0 * ds), lw, l1 - l0)
            strips.append(
                cv2.resize(strip, (tw, t1 - t0), interpolation=cv2.INTER_AREA)
                if strip.shape[:2] != (t1 - t0, tw)
                else strip
            )
        img = np.concatenate(strips, axis=0)
        return img, w0 / tw

    # --- lifecycle ------------------------------------------------------------------------------
    def close(self) -> None:  # noqa: B027 (readers holding no file need not close anything)
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def describe(self) -> dict:
        """Metadata as a plain dict (used by ``idcmap info``)."""
        return {
            "path": str(self.path),
            "format": self.format,
            "vendor": self.vendor,
            "dimensions": list(self.dimensions),
            "level_dimensions": [list(d) for d in self.level_dimensions],
            "level_downsamples": [round(d, 4) for d in self.level_downsamples],
            "mpp": list(self.mpp) if self.mpp else None,
            "objective_power": self.objective_power,
        }


def compose_from_tiles(lx: int, ly: int, w: int, h: int, tile_w: int, tile_h: int, get_tile) -> np.ndarray:
    """Assemble the region (lx, ly, w, h) of a level stored as a grid of tiles.

    ``get_tile(col, row)`` returns the decoded tile (rows, cols, >=3) at that grid position; edge
    tiles may be smaller than ``tile_w x tile_h``. Only the tiles that overlap the region are read.
    """
    out = np.empty((h, w, 3), np.uint8)
    for r in range(ly // tile_h, (ly + h - 1) // tile_h + 1):
        for c in range(lx // tile_w, (lx + w - 1) // tile_w + 1):
            tile = get_tile(c, r)
            sx0, sy0 = c * tile_w, r * tile_h
            ax0, ay0 = max(sx0, lx), max(sy0, ly)
            ax1, ay1 = min(sx0 + tile.shape[1], lx + w), min(sy0 + tile.shape[0], ly + h)
            out[ay0 - ly : ay1 - ly, ax0 - lx : ax1 - lx] = tile[ay0 - sy0 : ay1 - sy0, ax0 - sx0 : ax1 - sx0, :3]
    return out
