"""Slides OpenSlide reads: Aperio SVS, Hamamatsu NDPI, MIRAX, Leica SCN, Philips, tiled TIFF, ..."""

from __future__ import annotations

import cv2
import numpy as np
import openslide

from .reader import SlideError, SlideReader


class OpenSlideReader(SlideReader):
    """OpenSlide's metadata; the pixels from OpenSlide, or from ``pixels`` when ``open_slide`` found
    a reader that decodes this file's levels to the same pixels faster (tifffile for SVS and TIFF)."""

    def __init__(self, path):
        super().__init__(path)
        self.pixels: SlideReader | None = None
        try:
            self._slide = openslide.OpenSlide(str(path))
        except openslide.OpenSlideError as exc:
            raise SlideError(path, f"OpenSlide cannot read it: {exc}") from exc
        props = self._slide.properties
        self.format = props.get(openslide.PROPERTY_NAME_VENDOR, "openslide")
        if self.format == "aperio":
            self.format = "aperio-svs"

    @property
    def level_dimensions(self):
        return [tuple(map(int, d)) for d in self._slide.level_dimensions]

    @property
    def level_downsamples(self):
        return [float(d) for d in self._slide.level_downsamples]

    @property
    def mpp(self):
        props = self._slide.properties
        try:
            mx = float(props[openslide.PROPERTY_NAME_MPP_X])
            my = float(props.get(openslide.PROPERTY_NAME_MPP_Y, mx))
        except (KeyError, ValueError):
            return None
        return (mx, my) if mx > 0 and my > 0 else None

    @property
    def objective_power(self):
        try:
            return float(self._slide.properties[openslide.PROPERTY_NAME_OBJECTIVE_POWER])
        except (KeyError, ValueError):
            return None

    @property
    def vendor(self):
        return self._slide.properties.get(openslide.PROPERTY_NAME_VENDOR)

    def _read(self, level, lx, ly, w, h):
        if self.pixels is not None:
            return self.pixels._read(level, lx, ly, w, h)
        ds = self.level_downsamples[level]
        try:
            rgba = np.asarray(self._slide.read_region((round(lx * ds), round(ly * ds)), level, (w, h)))
        except openslide.OpenSlideError as exc:
            raise SlideError(self.path, f"OpenSlide failed reading a region: {exc}") from exc
        # composite transparent (out-of-scan) pixels on white, as OpenSlide's own thumbnails do
        rgb = cv2.cvtColor(rgba, cv2.COLOR_RGBA2RGB)
        if cv2.countNonZero(rgba[..., 3]) < rgba.shape[0] * rgba.shape[1]:
            rgb[rgba[..., 3] == 0] = 255
        return rgb

    def close(self):
        if self.pixels is not None:
            self.pixels.close()
        self._slide.close()
