"""Per-slide IDC maps from a predictions file: pure numpy/OpenCV functions and their writer.

``JOB_DIR/maps/<patient>/<slide>/``:

- ``prob.npy``: float32 ``(rows, cols)`` probability map at patch resolution, NaN off tissue.
- ``heatmap.png``: the map coloured (inferno, 0..1), glass white, upscaled, with a colour bar and
  the decision threshold marked.
- ``overlay.png``: the coloured patches blended on the slide thumbnail (placed with the level-0
  ``x``, ``y`` and ``level0_patch_size`` of each patch), with the same colour bar.
- ``idc.geojson``: IDC regions for QuPath: 8-connected patches with ``prob >= threshold`` whose
  area reaches the minimum IDC area (:func:`idcmap.jobs.render.summaries.idc_mask`), one ``Polygon`` Feature each
  (holes as inner rings), in level-0 pixels, clipped to the slide.

A patch stands for its grid cell (``min(stride, patch_size)`` target pixels a side, centred on the
patch), the same area :mod:`idcmap.jobs.render.summaries` counts, so a region's polygon area is its patch count
times the patch area. Polygon outlines follow patch edges exactly (no corner cutting).
"""

from __future__ import annotations

import io
import json
import math
import uuid
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from idcmap.errors import JobError
from idcmap.jobs.jobdir.layout import JobDir, write_bytes_atomic
from idcmap.jobs.jobdir.schema import SlideMeta
from idcmap.jobs.render.summaries import (
    downsample0,
    idc_mask,
    load_meta,
    min_region_patches,
    patch_area_mm2,
)

MAP_FILES = ("prob.npy", "heatmap.png", "overlay.png", "idc.geojson")
IDC_COLOR_RGB = (220, 30, 30)
COLORMAP = cv2.COLORMAP_INFERNO
GLASS_BGR = (255, 255, 255)
LEGEND_HEIGHT = 44
MIN_IMAGE_WIDTH = 320  # room for the colour bar and its labels
HEATMAP_TARGET_SIDE = 768  # the heatmap's longer side is upscaled towards this many pixels
MAX_CELL_PX = 16
COLUMNS = ["x", "y", "col", "row", "level0_patch_size", "prob_idc"]


class MapError(JobError):
    """A predictions file whose maps cannot be built; the message names the file."""


# --- probability map ---------------------------------------------------------------------------
def _columns(data, names):
    """Arrays from a pyarrow Table, a mapping of arrays, or a tuple in ``names`` order."""
    if isinstance(data, pa.Table):
        return [data.column(n).to_numpy() for n in names]
    if isinstance(data, (tuple, list)):
        return [np.asarray(a) for a in data]
    return [np.asarray(data[n]) for n in names]


def probability_map(table_or_arrays, cols: int, rows: int) -> np.ndarray:
    """Float32 ``(rows, cols)`` map: each patch's ``prob_idc`` at (row, col), NaN elsewhere.

    ``table_or_arrays``: a Table or mapping with ``col``, ``row``, ``prob_idc``, or a tuple
    ``(col, row, prob)``. Where patches repeat a cell, the highest probability wins.
    """
    col, row, prob = _columns(table_or_arrays, ["col", "row", "prob_idc"])
    col, row = col.astype(np.int64), row.astype(np.int64)
    outside = (col < 0) | (col >= cols) | (row < 0) | (row >= rows)
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise ValueError(f"patch (col {col[i]}, row {row[i]}) is outside the {cols}x{rows} grid")
    out = np.full((rows, cols), np.nan, dtype=np.float32)
    np.fmax.at(out, (row, col), prob.astype(np.float32))
    return out


# --- colouring ---------------------------------------------------------------------------------
def colorize(prob: np.ndarray) -> np.ndarray:
    """BGR uint8 image of probabilities (any shape HxW) in the colormap; NaN becomes glass."""
    valid = ~np.isnan(prob)
    levels = np.zeros(prob.shape, np.uint8)
    levels[valid] = np.round(np.clip(prob[valid], 0, 1) * 255).astype(np.uint8)
    bgr = cv2.applyColorMap(levels, COLORMAP)
    bgr[~valid] = GLASS_BGR
    return bgr


def with_legend(image: np.ndarray, threshold: float) -> np.ndarray:
    """``image`` on a white canvas with a 0..1 colour bar below it and the threshold marked."""
    h, w = image.shape[:2]
    width = max(w, MIN_IMAGE_WIDTH)
    canvas = np.full((h + LEGEND_HEIGHT, width, 3), 255, np.uint8)
    canvas[:h, :w] = image
    x0, x1, y0, y1 = 12, width - 12, h + 8, h + 20
    ramp = np.linspace(0, 1, x1 - x0, dtype=np.float32)[None, :].repeat(y1 - y0, axis=0)
    canvas[y0:y1, x0:x1] = colorize(ramp)
    cv2.rectangle(canvas, (x0 - 1, y0 - 1), (x1, y1), (0, 0, 0), 1)
    font, scale, ink = cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0)
    cv2.putText(canvas, "0", (x0 - 3, y1 + 14), font, scale, ink, 1, cv2.LINE_AA)
    cv2.putText(canvas, "1", (x1 - 5, y1 + 14), font, scale, ink, 1, cv2.LINE_AA)
    tx = x0 + int(round(min(max(threshold, 0.0), 1.0) * (x1 - x0 - 1)))
    cv2.line(canvas, (tx, y0 - 4), (tx, y1 + 3), (255, 160, 0), 2)
    label = f"threshold {threshold:.2f}"
    (tw, _), _ = cv2.getTextSize(label, font, scale, 1)
    lx = min(max(tx - tw // 2, 14), width - tw - 14)
    cv2.putText(canvas, label, (lx, y1 + 14), font, scale, ink, 1, cv2.LINE_AA)
    return canvas


def heatmap_scale(cols: int, rows: int) -> int:
    """Pixels per patch so the heatmap's longer side nears HEATMAP_TARGET_SIDE (1..MAX_CELL_PX)."""
    return int(min(MAX_CELL_PX, max(1, math.ceil(HEATMAP_TARGET_SIDE / max(cols, rows, 1)))))


def heatmap_image(prob: np.ndarray, threshold: float) -> np.ndarray:
    """BGR heatmap of a probability map: one square of ``heatmap_scale`` px per patch, legend below."""
    rows, cols = prob.shape
    s = heatmap_scale(cols, rows)
    big = cv2.resize(colorize(prob), (cols * s, rows * s), interpolation=cv2.INTER_NEAREST)
    return with_legend(big, threshold)


def decode_thumbnail(jpeg: bytes, size: tuple[int, int]) -> np.ndarray:
    """BGR thumbnail from JPEG bytes; a white image of ``size`` (w, h) when there is none."""
    if not jpeg:
        return np.full((size[1], size[0], 3), 255, np.uint8)
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError("the thumbnail is not a decodable JPEG")
    return image


def paint_patches(shape: tuple[int, int], x0, y0, x1, y1, values) -> np.ndarray:
    """Float32 image of ``shape`` with each box ``[y0:y1, x0:x1]`` set to its value, NaN elsewhere;
    where boxes overlap, the highest value wins. Boxes must lie inside the image."""
    canvas = np.full(shape, np.nan, np.float32)
    widths, heights = x1 - x0, y1 - y0
    kx, ky = int(widths.max(initial=0)), int(heights.max(initial=0))
    if kx * ky <= len(values):  # small boxes: one vectorised pass per pixel offset in a box
        for dy in range(ky):
            for dx in range(kx):
                inside = (dy < heights) & (dx < widths)
                np.fmax.at(canvas, (y0[inside] + dy, x0[inside] + dx), values[inside])
    else:  # few large boxes: one slice per box
        for a, b, c, d, v in zip(y0, y1, x0, x1, values):
            np.fmax(canvas[a:b, c:d], v, out=canvas[a:b, c:d])
    return canvas


def overlay_image(thumbnail: np.ndarray, x, y, size0, prob, downsample: float, threshold: float) -> np.ndarray:
    """Patches coloured by probability, blended on ``thumbnail`` (BGR), legend below.

    ``x``, ``y``, ``size0``: level-0 top-left and side of each patch; ``downsample``: level-0
    pixels per thumbnail pixel. Opacity rises with the probability (0.25 at 0 to 0.75 at 1) so low
    scores leave the tissue visible. Where patches overlap, the highest probability shows.
    """
    if not downsample > 0:
        raise ValueError(f"thumbnail downsample must be positive, got {downsample}")
    h, w = thumbnail.shape[:2]
    x, y, size0 = (np.asarray(a, np.float64) for a in (x, y, size0))
    x0 = np.clip(np.round(x / downsample), 0, w).astype(np.int64)
    y0 = np.clip(np.round(y / downsample), 0, h).astype(np.int64)
    x1 = np.clip(np.maximum(np.round((x + size0) / downsample), x0 + 1), 0, w).astype(np.int64)
    y1 = np.clip(np.maximum(np.round((y + size0) / downsample), y0 + 1), 0, h).astype(np.int64)
    canvas = paint_patches((h, w), x0, y0, x1, y1, np.asarray(prob, np.float32))
    alpha = np.where(np.isnan(canvas), 0.0, 0.25 + 0.5 * np.nan_to_num(canvas))[..., None]
    blended = thumbnail.astype(np.float32) * (1 - alpha) + colorize(canvas).astype(np.float32) * alpha
    return with_legend(np.round(blended).astype(np.uint8), threshold)


# --- IDC regions as GeoJSON --------------------------------------------------------------------
def _next(a: np.ndarray) -> np.ndarray:
    return np.concatenate([a[1:], a[:1]])


def _prev(a: np.ndarray) -> np.ndarray:
    return np.concatenate([a[-1:], a[:-1]])


def _shoelace(ring: np.ndarray) -> float:
    """Signed area of an open ring (last != first)."""
    nxt = _next(ring)
    return 0.5 * float(np.dot(ring[:, 0], nxt[:, 1]) - np.dot(ring[:, 1], nxt[:, 0]))


def _drop_redundant(ring: np.ndarray) -> np.ndarray:
    """Remove repeated and collinear points of an open ring (last != first)."""
    if len(ring) > 1:
        ring = ring[np.any(ring != _prev(ring), axis=1)]
    if len(ring) < 3:
        return ring
    prev, nxt = _prev(ring), _next(ring)
    cross = (ring[:, 0] - prev[:, 0]) * (nxt[:, 1] - ring[:, 1]) - (ring[:, 1] - prev[:, 1]) * (nxt[:, 0] - ring[:, 0])
    return ring[cross != 0]


def corner_grid(mask: np.ndarray) -> np.ndarray:
    """The mask on a doubled grid where patch (r, c) covers ``[2r, 2r+2] x [2c, 2c+2]``: patch
    corners are at even indices, so contours traced on it run along patch edges."""
    h, w = mask.shape
    centres = np.zeros((2 * h + 1, 2 * w + 1), np.uint8)
    centres[1::2, 1::2] = mask
    return cv2.dilate(centres, np.ones((3, 3), np.uint8))


def _edge_ring(contour: np.ndarray) -> np.ndarray:
    """Corner points, in patch units (x=col, y=row), of a contour traced on the corner grid.

    OpenCV steps diagonally past concave corners; putting the skipped corner back and keeping only
    corners gives the exact patch-edge outline.
    """
    p = contour[:, 0, :].astype(np.int64)
    q = _next(p)
    diagonal = (p[:, 0] != q[:, 0]) & (p[:, 1] != q[:, 1])
    corner_a = np.column_stack([p[:, 0], q[:, 1]])
    corner_b = np.column_stack([q[:, 0], p[:, 1]])
    corner = np.where(((corner_a % 2) == 0).all(axis=1)[:, None], corner_a, corner_b)
    points = np.stack([p, corner], axis=1).reshape(-1, 2)
    points = points[np.column_stack([np.ones_like(diagonal), diagonal]).reshape(-1)]
    points = points[((points % 2) == 0).all(axis=1)]
    return _drop_redundant(points.astype(np.float64) / 2)


def mask_rings(mask: np.ndarray, labels: np.ndarray) -> dict[int, tuple[np.ndarray, list[np.ndarray]]]:
    """Outer ring and holes (patch units, open rings) of each 8-connected component of ``mask``,
    keyed by its label in ``labels`` (from ``cv2.connectedComponents(mask, connectivity=8)``)."""
    contours, hierarchy = cv2.findContours(corner_grid(mask.astype(np.uint8)), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    padded = np.pad(labels, 1)  # the 4 patches around corner (x, y) are padded[y:y+2, x:x+2]
    rings: dict[int, tuple[np.ndarray, list[np.ndarray]]] = {}
    outer_label: dict[int, int] = {}
    parents = hierarchy[0][:, 3] if contours else []
    for i, contour in enumerate(contours):
        if parents[i] != -1:
            continue
        x, y = contour[0, 0] // 2  # a corner of the outline: its patches are one component
        label = int(padded[y : y + 2, x : x + 2].max())
        outer_label[i] = label
        rings[label] = (_edge_ring(contour), [])
    for i, contour in enumerate(contours):
        if parents[i] != -1:
            hole = _edge_ring(contour)
            if len(hole) >= 3:
                rings[outer_label[parents[i]]][1].append(hole)
    return rings


@dataclass(frozen=True)
class GridGeometry:
    """Maps patch-grid units (col, row as continuous coordinates) to level-0 pixels."""

    cell_x: float  # level-0 px per grid step
    cell_y: float
    offset_x: float  # level-0 px from the grid origin to the patch's cell
    offset_y: float
    width0: int
    height0: int

    @classmethod
    def from_meta(cls, meta: SlideMeta) -> GridGeometry:
        ds_x, ds_y = downsample0(meta)
        shift = (meta.patch_size - meta.stride) / 2  # the cell is centred on the patch
        return cls(meta.stride * ds_x, meta.stride * ds_y, shift * ds_x, shift * ds_y, meta.width0, meta.height0)

    def to_level0(self, ring: np.ndarray) -> np.ndarray:
        """Level-0 coordinates, clipped to the slide ``[0, width0] x [0, height0]``."""
        out = np.empty_like(ring, dtype=np.float64)
        out[:, 0] = np.clip(ring[:, 0] * self.cell_x + self.offset_x, 0, self.width0)
        out[:, 1] = np.clip(ring[:, 1] * self.cell_y + self.offset_y, 0, self.height0)
        return np.round(out, 2)


def _geojson_ring(ring: np.ndarray, exterior: bool) -> list[list[float]] | None:
    """A closed ring (first == last), exterior with positive shoelace area, holes negative;
    None when nothing is left of it (clipped away)."""
    ring = _drop_redundant(ring)  # clipping may have made points repeat or line up
    area = _shoelace(ring) if len(ring) >= 3 else 0.0
    if area == 0:
        return None
    if (area > 0) != exterior:
        ring = ring[::-1]
    return np.vstack([ring, ring[:1]]).tolist()


def idc_regions(prob: np.ndarray, meta: SlideMeta) -> dict:
    """GeoJSON FeatureCollection of IDC regions (:func:`~jobs.summaries.idc_mask`) in level-0 pixels.

    Each region is a QuPath annotation classified "IDC" with its patch count, area in mm² and
    mean/max probability as measurements.
    """
    mask = idc_mask(prob, meta.threshold, min_region_patches(meta))
    n, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    flat, values = labels[mask], prob[mask].astype(np.float64)
    counts = np.bincount(flat, minlength=n)
    means = np.bincount(flat, weights=values, minlength=n) / np.maximum(counts, 1)
    maxima = np.zeros(n)
    np.maximum.at(maxima, flat, values)
    geometry = GridGeometry.from_meta(meta)
    area_per_patch = patch_area_mm2(meta)
    features: list[dict] = []
    for label, (outer, holes) in sorted(mask_rings(mask, labels).items()):
        shell = _geojson_ring(geometry.to_level0(outer), exterior=True)
        if shell is None:
            continue
        rings = [shell] + [r for r in (_geojson_ring(geometry.to_level0(h), False) for h in holes) if r is not None]
        index = len(features) + 1
        count, area = int(counts[label]), round(int(counts[label]) * area_per_patch, 6)
        mean_p = round(float(means[label]), 4)
        features.append(
            {
                "type": "Feature",
                "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"idcmap:{meta.patient_id}/{meta.slide_id}/{index}")),
                "geometry": {"type": "Polygon", "coordinates": rings},
                "properties": {
                    "objectType": "annotation",
                    "name": f"IDC {index}: {area:.3f} mm², mean p {mean_p:.2f}",
                    "classification": {"name": "IDC", "color": list(IDC_COLOR_RGB)},
                    "isLocked": False,
                    "measurements": {
                        "IDC patches": count,
                        "Area mm^2": area,
                        "Mean probability": mean_p,
                        "Max probability": round(float(maxima[label]), 4),
                    },
                },
            }
        )
    return {"type": "FeatureCollection", "features": features}


# --- writing a slide's maps --------------------------------------------------------------------
def _png(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def slide_map_files(meta: SlideMeta, table: pa.Table) -> dict[str, bytes]:
    """Pure: the bytes of each map file of one slide, from its metadata and predictions."""
    prob = probability_map(table, meta.cols, meta.rows)
    x, y, size0, p = _columns(table, ["x", "y", "level0_patch_size", "prob_idc"])
    if not meta.thumbnail_downsample > 0:
        raise ValueError(f"thumbnail_downsample must be positive, got {meta.thumbnail_downsample}")
    size = (
        max(1, math.ceil(meta.width0 / meta.thumbnail_downsample)),
        max(1, math.ceil(meta.height0 / meta.thumbnail_downsample)),
    )
    thumbnail = decode_thumbnail(meta.thumbnail_bytes(), size)
    return {
        "prob.npy": _npy(prob),
        "heatmap.png": _png(heatmap_image(prob, meta.threshold)),
        "overlay.png": _png(overlay_image(thumbnail, x, y, size0, p, meta.thumbnail_downsample, meta.threshold)),
        "idc.geojson": (json.dumps(idc_regions(prob, meta)) + "\n").encode(),
    }


def write_slide_maps(job_dir, predictions_file, meta: SlideMeta | None = None) -> Path:
    """Build one slide's maps from its predictions file into the job's maps folder for the slide."""
    path = Path(predictions_file)
    meta = meta or load_meta(path)
    try:
        table = pq.read_table(path, columns=COLUMNS)
        files = slide_map_files(meta, table)
    except (OSError, KeyError, ValueError, pa.ArrowException) as e:
        raise MapError(f"{path}: cannot build the maps: {e}") from e
    out = JobDir(job_dir).maps(meta.patient_id, meta.slide_id)
    for name, data in files.items():
        write_bytes_atomic(out / name, data)
    return out
