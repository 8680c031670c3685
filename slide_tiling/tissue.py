"""Tissue detection, fitted on a thumbnail and applied to every patch at full resolution.

H&E tissue is pink to purple (saturated), and where it is pale (fat, loose stroma) its thin
membranes are still darker than the glass around it. So a pixel is tissue when it is saturated
(Otsu on the thumbnail's saturation, clamped to a range between glass and the palest stain) or
clearly darker than the slide's background (its brightest unsaturated tone, from the thumbnail).
Pen ink, which is green/teal (green above red) or deep blue (blue far above red and green), and
near-black pixels (debris, black ink, scanner padding) never count.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import cv2
import numpy as np

#: bounds of the fitted saturation threshold (0-255 scale)
MIN_SATURATION, MAX_SATURATION = 15, 25
#: a pixel this much darker than the background (HSV value) is tissue even when unsaturated
GREY_DROP = 30
#: pixels darker than this (HSV value, 0-255) are debris or black ink, not tissue
DARK_VALUE = 50
#: connected tissue smaller than this many thumbnail pixels is dust
MIN_SPECK_AREA = 4


@dataclass(frozen=True)
class TissueThreshold:
    saturation: int
    background_value: int = 255
    dark_value: int = DARK_VALUE

    def mask(self, rgb: np.ndarray) -> np.ndarray:
        """Boolean tissue mask of an RGB uint8 image (any size).

        The same pixels as thresholding OpenCV's HSV saturation and value (tested), without computing
        hue: saturation reaches the threshold exactly where max - min of R, G, B reaches a value that
        depends only on the max (a look-up table)."""
        return self.masks(rgb)[0]

    def masks(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(tissue, ink): boolean masks of an RGB uint8 image; ink is never tissue."""
        r, g, b = cv2.split(rgb)
        value = cv2.max(cv2.max(r, g), b)
        spread = cv2.subtract(value, cv2.min(cv2.min(r, g), b))
        saturated = cv2.compare(spread, cv2.LUT(value, _min_spread(self.saturation)), cv2.CMP_GE)
        grey = _above(value, self.background_value - GREY_DROP, inverse=True)  # clearly darker than glass
        kept = cv2.bitwise_and(cv2.bitwise_or(saturated, grey), _above(value, self.dark_value - 1))
        ink = _ink(r, g, b)
        tissue = cv2.bitwise_and(kept, cv2.bitwise_not(ink))
        return (
            cv2.threshold(tissue, 0, 1, cv2.THRESH_BINARY)[1].view(bool),
            cv2.threshold(ink, 0, 1, cv2.THRESH_BINARY)[1].view(bool),
        )


def _above(plane: np.ndarray, t: float, inverse: bool = False) -> np.ndarray:
    """uint8 0/255: plane > t (plane <= t with ``inverse``)."""
    return cv2.threshold(plane, t, 255, cv2.THRESH_BINARY_INV if inverse else cv2.THRESH_BINARY)[1]


@cache
def _min_spread(saturation: int) -> np.ndarray:
    """uint8 table: for each value v (max of R, G, B), the smallest v - min(R, G, B) whose OpenCV
    HSV saturation is at least ``saturation`` (255 where none is: v - min never exceeds v)."""
    v = np.arange(256, dtype=np.int16)[:, None]
    spread = np.arange(256, dtype=np.int16)[None, :]
    low = np.clip(v - spread, 0, 255).astype(np.uint8)
    grid = np.stack([np.broadcast_to(v, low.shape).astype(np.uint8), low, low], axis=-1)
    reaches = (cv2.cvtColor(grid, cv2.COLOR_RGB2HSV)[..., 1] >= saturation) & (spread <= v)
    return np.where(reaches.any(axis=1), reaches.argmax(axis=1), 255).astype(np.uint8)


def _ink(r: np.ndarray, g: np.ndarray, b: np.ndarray) -> np.ndarray:
    """uint8 0/255: green/teal (green above red) or deep blue (blue far above red and green)."""
    # cv2.subtract saturates at 0: "a - b > t" is "a > b + t" for t >= 0
    green = _above(cv2.subtract(g, r), 15)
    blue = cv2.bitwise_and(_above(cv2.subtract(b, r), 50), _above(cv2.subtract(b, g), 30))
    return cv2.bitwise_or(green, blue)


def ink_mask(rgb: np.ndarray) -> np.ndarray:
    """Pixels of green/teal or blue marker ink."""
    return _ink(*cv2.split(rgb)) > 0


def fit_threshold(thumbnail: np.ndarray) -> TissueThreshold:
    """Otsu on the saturation of a thumbnail's non-ink, non-dark pixels, clamped; background tone."""
    hsv = cv2.cvtColor(thumbnail, cv2.COLOR_RGB2HSV)
    keep = (hsv[..., 2] >= DARK_VALUE) & ~ink_mask(thumbnail)
    sat, val = hsv[..., 1][keep], hsv[..., 2][keep]
    if sat.size == 0:
        return TissueThreshold(MAX_SATURATION)
    otsu, _ = cv2.threshold(sat.reshape(-1, 1), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    saturation = int(np.clip(otsu, MIN_SATURATION, MAX_SATURATION))
    glass = val[sat < saturation]
    background = int(np.percentile(glass, 90)) if glass.size else 255
    return TissueThreshold(saturation, background)


@dataclass
class TissueMask:
    """A slide's tissue mask at thumbnail resolution."""

    mask: np.ndarray  # bool (rows, cols)
    downsample: float  # level-0 pixels per mask pixel
    threshold: TissueThreshold

    @classmethod
    def from_thumbnail(cls, thumbnail: np.ndarray, downsample: float) -> TissueMask:
        threshold = fit_threshold(thumbnail)
        mask = threshold.mask(thumbnail)
        # drop specks (dust, single noisy pixels) but keep thin tissue strands
        n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
        mask = (stats[:, cv2.CC_STAT_AREA] >= MIN_SPECK_AREA)[labels] & mask
        return cls(mask, downsample, threshold)

    def touches(self, x0, y0, x1, y1, margin: int = 1) -> np.ndarray:
        """Whether each level-0 box [x0, x1) x [y0, y1) touches tissue, with a margin in mask pixels
        (arrays, broadcast together)."""
        h, w = self.mask.shape
        c0 = np.clip(np.floor(np.asarray(x0) / self.downsample).astype(np.int64) - margin, 0, w)
        r0 = np.clip(np.floor(np.asarray(y0) / self.downsample).astype(np.int64) - margin, 0, h)
        c1 = np.clip(np.ceil(np.asarray(x1) / self.downsample).astype(np.int64) + margin, 0, w)
        r1 = np.clip(np.ceil(np.asarray(y1) / self.downsample).astype(np.int64) + margin, 0, h)
        ii = cv2.integral(self.mask.astype(np.uint8))
        return (ii[r1, c1] - ii[r0, c1] - ii[r1, c0] + ii[r0, c0]) > 0

    @property
    def fraction(self) -> float:
        return float(self.mask.mean()) if self.mask.size else 0.0
