"""H&E stain space: optical density, colour deconvolution, re-staining and Macenko stain vectors.

Colour deconvolution (Ruifrok & Johnston 2001) writes each pixel's optical density
OD = -ln((I + 1) / 256) as a mix of three stain vectors: haematoxylin (nuclei), eosin (stroma,
cytoplasm) and a residual. Scaling one stain's concentration changes that stain alone, which is
how a different lab's staining differs; it is what :func:`restain` does (and, in TensorFlow,
:func:`idcmap.model.augment.hed_jitter`).

Macenko et al. (2009) estimate a slide's own H and E vectors from its tissue pixels: the plane of
the two largest principal directions of their OD, and the robust extreme angles in that plane.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Ruifrok-Johnston stain vectors (rows: haematoxylin, eosin, residual), unit length, in OD space
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
RGB_FROM_HED = RGB_FROM_HED / np.linalg.norm(RGB_FROM_HED, axis=1, keepdims=True)
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)

#: pixels with a total OD below this are glass or fat, not stained tissue (Macenko's beta)
TISSUE_OD = 0.15
#: percentile of the angle distribution taken as each stain's direction (Macenko's alpha)
ANGLE_PERCENTILE = 1.0
#: percentile of a stain's concentration taken as its "maximum" (robust to outliers)
MAX_PERCENTILE = 99.0


def optical_density(rgb) -> np.ndarray:
    """OD = -ln((I + 1) / 256) per channel, float64 (I in 0..255)."""
    return -np.log((np.asarray(rgb, np.float64) + 1.0) / 256.0)


def rgb_from_od(od) -> np.ndarray:
    """Inverse of :func:`optical_density`, rounded and clipped to uint8."""
    return np.clip(np.rint(256.0 * np.exp(-np.asarray(od)) - 1.0), 0, 255).astype(np.uint8)


def restain(
    rgb,
    h_scale: float = 1.0,
    e_scale: float = 1.0,
    h_shift: float = 0.0,
    e_shift: float = 0.0,
    stains: np.ndarray = RGB_FROM_HED,
) -> np.ndarray:
    """Change the haematoxylin and eosin of uint8 RGB images: each stain's concentration times its
    scale plus its shift; the residual is kept. Neutral settings give back the same pixels."""
    conc = optical_density(rgb) @ np.linalg.inv(stains)
    conc[..., 0] = conc[..., 0] * h_scale + h_shift
    conc[..., 1] = conc[..., 1] * e_scale + e_shift
    return rgb_from_od(conc @ stains)


@dataclass(frozen=True)
class StainVectors:
    """A slide's (or patient's) stains: H and E unit OD vectors and their robust maximum
    concentrations (the 99th percentile over tissue pixels)."""

    h: tuple[float, float, float]
    e: tuple[float, float, float]
    max_h: float
    max_e: float

    @property
    def matrix(self) -> np.ndarray:
        """(2, 3): rows H, E."""
        return np.array([self.h, self.e], np.float64)

    def concentrations(self, rgb) -> np.ndarray:
        """(..., 2) least-squares H and E concentrations of RGB pixels."""
        od = optical_density(rgb)
        return od @ np.linalg.pinv(self.matrix)


class StainFitError(ValueError):
    """Too few stained tissue pixels to estimate stain vectors."""


#: the reference stains patches are normalised to: Macenko's published H&E reference, a constant
#: chosen on none of our patients
REFERENCE = StainVectors((0.5626, 0.7201, 0.4062), (0.2159, 0.8012, 0.5581), 1.9705, 1.0308)


def macenko(rgb, min_pixels: int = 500) -> StainVectors:
    """Macenko stain vectors of the tissue pixels among ``rgb`` (any shape ending in 3)."""
    od = optical_density(rgb).reshape(-1, 3)
    od = od[np.all(od > TISSUE_OD, axis=1)]
    if len(od) < min_pixels:
        raise StainFitError(f"{len(od)} stained pixels, fewer than {min_pixels}")
    _, vecs = np.linalg.eigh(np.cov(od, rowvar=False))
    plane = vecs[:, [2, 1]]  # the two largest principal directions
    plane *= np.sign(plane.sum(axis=0, keepdims=True) + 1e-12)  # point into positive OD
    proj = od @ plane
    phi = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(phi, [ANGLE_PERCENTILE, 100 - ANGLE_PERCENTILE])
    v1 = plane @ np.array([np.cos(lo), np.sin(lo)])
    v2 = plane @ np.array([np.cos(hi), np.sin(hi)])
    # haematoxylin is the bluer one: more OD in red (absorbs red light) relative to blue
    h, e = (v1, v2) if v1[0] > v2[0] else (v2, v1)
    h, e = np.abs(h) / np.linalg.norm(h), np.abs(e) / np.linalg.norm(e)
    conc = od @ np.linalg.pinv(np.stack([h, e]))
    max_h, max_e = np.percentile(conc, MAX_PERCENTILE, axis=0)
    return StainVectors(
        (float(h[0]), float(h[1]), float(h[2])), (float(e[0]), float(e[1]), float(e[2])), float(max_h), float(max_e)
    )


def transfer(rgb, source: StainVectors, target: StainVectors) -> np.ndarray:
    """Re-draw uint8 RGB pixels stained as ``source`` with ``target``'s stains and concentration
    scale (Macenko normalisation when ``target`` is a reference; a stain shift when it is another
    slide's)."""
    conc = source.concentrations(rgb)
    conc = conc * np.array([target.max_h / source.max_h, target.max_e / source.max_e])
    return rgb_from_od(conc @ target.matrix)


def normalise_groups(rgb, groups, reference: StainVectors = REFERENCE) -> tuple[np.ndarray, dict]:
    """Each group's images (a patient's patches, a slide's) re-drawn with ``reference``'s stains
    from the group's own Macenko fit: (images, group -> StainVectors, or None where too few
    stained pixels to fit, that group left as it was)."""
    out, groups = np.array(rgb, copy=True), np.asarray(groups)
    fitted: dict[str, StainVectors | None] = {}
    for g in np.unique(groups):
        m = groups == g
        try:
            vectors = fitted[g] = macenko(out[m])
        except StainFitError:
            fitted[g] = None
            continue
        out[m] = transfer(out[m], vectors, reference)
    return out, fitted
