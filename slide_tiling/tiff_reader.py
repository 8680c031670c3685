"""TIFFs OpenSlide cannot open: plain striped or tiled RGB images and RGB pyramids, via tifffile.

Regions are decoded segment by segment (strips or tiles), so only the segments that overlap the
region are ever decompressed, and the last few decoded segments are kept: neighbouring regions
share tiles. OpenSlide's Aperio and generic-TIFF readers decode their pixels through this one too
(the same pixels, without OpenSlide's ARGB round trip: see ``open_slide``).
"""

from __future__ import annotations

import re
from collections import OrderedDict

import numpy as np
import tifffile

from .reader import SlideError, SlideReader, compose_from_tiles

_CM, _INCH = 3, 2  # TIFF ResolutionUnit values
#: decoded segments kept per open slide (a 512² RGB tile is 0.75 MiB)
CACHE_BYTES = 32 << 20


class TiffReader(SlideReader):
    format = "tiff"

    def __init__(self, path):
        super().__init__(path)
        try:
            self._tif = tifffile.TiffFile(str(path))
            series = self._tif.series[0]
            self._pages = [lvl.keyframe for lvl in series.levels]
        except Exception as exc:
            raise SlideError(path, f"not a readable TIFF: {exc}") from exc
        self._cache: OrderedDict = OrderedDict()  # (level, segment) -> decoded pixels, oldest first
        self._cached_bytes = 0
        for page in self._pages:
            if (
                page.dtype != np.uint8
                or page.samplesperpixel not in (3, 4)
                or page.planarconfig != 1
                or page.photometric not in (2, 6, 7)
            ):  # RGB, YCbCr, (old-style) JPEG
                self._tif.close()
                raise SlideError(
                    path,
                    f"unsupported TIFF pixels: {page.dtype}, "
                    f"{page.samplesperpixel} samples, photometric "
                    f"{int(page.photometric)} (need 8-bit RGB)",
                )

    @property
    def level_dimensions(self):
        return [(p.imagewidth, p.imagelength) for p in self._pages]

    @property
    def mpp(self):
        return self._ome_mpp() or self._aperio_mpp() or self._resolution_mpp()

    def _aperio_mpp(self):
        """``MPP = 0.25`` in an Aperio ImageDescription (an SVS that OpenSlide cannot open)."""
        description = self._pages[0].description or ""
        m = re.search(r"\|\s*MPP\s*=\s*([0-9.]+)", description) if description.startswith("Aperio") else None
        try:
            return (float(m.group(1)),) * 2 if m and float(m.group(1)) > 0 else None
        except ValueError:
            return None

    def _ome_mpp(self):
        xml = self._tif.ome_metadata
        if not xml:
            return None
        pixels = re.search(r"<(?:\w+:)?Pixels\b[^>]*>", xml)
        if not pixels:
            return None
        attrs = dict(re.findall(r'(\w+)="([^"]*)"', pixels.group(0)))
        scale = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3}
        try:
            return tuple(
                float(attrs[f"PhysicalSize{a}"]) * scale[attrs.get(f"PhysicalSize{a}Unit", "µm")] for a in "XY"
            )
        except (KeyError, ValueError):
            return None

    def _resolution_mpp(self):
        page = self._pages[0]
        unit = page.tags.get("ResolutionUnit")
        xres, yres = page.tags.get("XResolution"), page.tags.get("YResolution")
        if unit is None or xres is None:
            return None
        per_um = {_CM: 1e4, _INCH: 25400.0}.get(int(unit.value))
        if per_um is None:
            return None
        mpps = []
        for tag in (xres, yres or xres):
            num, den = tag.value
            mpps.append(per_um * den / num if num else 0.0)
        # 72/96/300 dpi defaults of image editors are not a scan resolution: a microscope scan is
        # finer than 50 µm/px
        return tuple(mpps) if all(0 < m < 50 for m in mpps) else None

    def _read(self, level, lx, ly, w, h):
        page = self._pages[level]
        if page.is_tiled:
            tw, th = page.tilewidth, page.tilelength
        else:
            tw, th = page.imagewidth, page.rowsperstrip or page.imagelength
        per_row = -(-page.imagewidth // tw)
        return compose_from_tiles(lx, ly, w, h, tw, th, lambda c, r: self._cached_segment(level, r * per_row + c))

    def _cached_segment(self, level: int, index: int) -> np.ndarray:
        key = (level, index)
        seg = self._cache.get(key)
        if seg is not None:
            self._cache.move_to_end(key)
            return seg
        seg = self._segment(self._pages[level], index)
        if seg.nbytes <= CACHE_BYTES // 8:  # a whole-image strip is not worth keeping
            self._cache[key] = seg
            self._cached_bytes += seg.nbytes
            while self._cached_bytes > CACHE_BYTES:
                self._cached_bytes -= self._cache.popitem(last=False)[1].nbytes
        return seg

    def _segment(self, page, index: int) -> np.ndarray:
        offset, count = page.dataoffsets[index], page.databytecounts[index]
        fh = self._tif.filehandle
        fh.seek(offset)
        data = fh.read(count)
        if count == 0 or len(data) != count:
            raise SlideError(self.path, f"TIFF is truncated (segment {index} at byte {offset})")
        seg, _, _ = page.decode(data, index, jpegtables=page.jpegtables)
        if seg is None:
            raise SlideError(self.path, f"TIFF segment {index} does not decode")
        return seg.reshape(seg.shape[-3:])  # (depth=1, rows, cols, samples) -> (rows, cols, samples)

    def close(self):
        self._cache.clear()
        self._tif.close()
