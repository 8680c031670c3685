"""One summary row per slide and per patient, from a job's predictions files.

Definitions (the numbers in ``summaries.parquet``, the report and ``idcmap query``):

- ``patches``: patches in the slide's grid (``cols x rows``); ``tissue_patches``: rows in the
  predictions file (background patches are never scored).
- ``idc_patches``: tissue patches with ``prob_idc >= threshold`` (the model bundle's decision
  threshold stored in each file's :class:`~jobs.schema.SlideMeta`) that lie in an IDC region: an
  8-connected group of such patches whose area is at least the minimum IDC area (below). Smaller
  groups are more often false positives than IDC (out-of-fold map Dice, ``models/README.md``), so
  the map's regions, the GeoJSON and the counts leave them out alike.
- ``idc_area_mm2``: ``idc_patches x`` the area one patch stands for. A patch stands for its grid
  cell: ``cell x cell`` target pixels with ``cell = min(stride, patch_size)``, converted to µm with
  the level-0 size of a target pixel (``downsample0 x mpp``, per axis). Without overlap this is the
  patch itself (``level0_patch_size x mpp_x x level0_patch_size x mpp_y / 1e6``); with
  ``stride < patch_size`` overlapping patches are not counted twice.
- ``mean_prob``, ``max_prob``, ``p95_prob``: over tissue patches (p95 with numpy's linear
  interpolation).
- ``call``: ``"IDC"`` when the IDC area is at least the minimum area (``job_spec["min_idc_area_mm2"]``,
  default :data:`DEFAULT_MIN_IDC_AREA_MM2`, 5 patches of 200 µm), else ``"no IDC"``; null when failed.
- Patient rows aggregate the patient's done slides (sums of counts and areas, each slide at its
  own file's threshold; probability statistics over all their tissue patches); the patient is
  called ``"IDC"`` when any slide is. Its status is ``"failed"`` only when every slide failed;
  ``error`` then (or when some failed) lists the failed slides and their reasons.

Only the ``prob_idc``, ``col`` and ``row`` columns are read, one file at a time; a patient row
holds its slides' probabilities (4 bytes per tissue patch) until it is written.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from idcmap.errors import JobError
from idcmap.jobs.jobdir.layout import JobDir
from idcmap.jobs.jobdir.schema import (
    SUMMARIES,
    SlideMeta,
    read_failures,
    read_slide_meta,
    write_parquet_atomic,
)

DEFAULT_MIN_IDC_AREA_MM2 = 0.2  # 5 patches of 200 µm x 200 µm


class SummaryError(JobError):
    """A predictions file that cannot be summarised; the message names the file."""


def downsample0(meta: SlideMeta) -> tuple[float, float]:
    """Level-0 pixels per target pixel (x, y)."""
    return (meta.target_mpp / meta.mpp[0], meta.target_mpp / meta.mpp[1])


def patch_area_mm2(meta: SlideMeta) -> float:
    """Area one patch stands for: its grid cell, ``min(stride, patch_size)`` target px a side."""
    cell = min(meta.stride, meta.patch_size)
    ds_x, ds_y = downsample0(meta)
    return (cell * ds_x * meta.mpp[0]) * (cell * ds_y * meta.mpp[1]) / 1e6


def min_idc_area_mm2(meta: SlideMeta) -> float:
    value = (meta.job_spec or {}).get("min_idc_area_mm2")
    return DEFAULT_MIN_IDC_AREA_MM2 if value is None else float(value)


@dataclass
class ProbStats:
    """Counts and statistics of a set of tissue-patch probabilities."""

    tissue_patches: int
    idc_patches: int
    idc_fraction: float | None
    mean_prob: float | None
    max_prob: float | None
    p95_prob: float | None


def prob_stats(probs: np.ndarray, idc_patches: int) -> ProbStats:
    """Pure: statistics of ``probs`` (tissue patches) of which ``idc_patches`` are IDC."""
    probs = np.asarray(probs, dtype=np.float64)
    n = int(probs.size)
    if n == 0:
        return ProbStats(0, 0, None, None, None, None)
    return ProbStats(
        n, idc_patches, idc_patches / n, float(probs.mean()), float(probs.max()), float(np.percentile(probs, 95))
    )


def patches_for_area(area_mm2: float, patch_mm2: float) -> int:
    """Pure: patches of ``patch_mm2`` each that a region needs to reach ``area_mm2`` (at least 1)."""
    return max(1, math.ceil(area_mm2 / patch_mm2 - 1e-9))


def min_region_patches(meta: SlideMeta) -> int:
    """Patches an IDC region needs to reach the minimum IDC area (at least 1)."""
    return patches_for_area(min_idc_area_mm2(meta), patch_area_mm2(meta))


def idc_mask(prob_map: np.ndarray, threshold: float, min_patches: int) -> np.ndarray:
    """Pure: the IDC calls of a (rows, cols) probability map (NaN off tissue): patches at or above
    ``threshold`` in 8-connected groups of at least ``min_patches``."""
    mask = np.nan_to_num(prob_map, nan=-1.0) >= threshold
    if min_patches <= 1 or not mask.any():
        return mask
    n, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    sizes = np.bincount(labels[mask], minlength=n)
    return mask & (sizes[labels] >= min_patches)


def slide_idc_mask(meta: SlideMeta, col, row, probs) -> np.ndarray:
    """Per patch (in the given order): is it in an IDC region of its slide."""
    col, row = np.asarray(col, np.int64), np.asarray(row, np.int64)
    grid = np.full((meta.rows, meta.cols), np.nan, np.float32)
    grid[row, col] = probs
    return idc_mask(grid, meta.threshold, min_region_patches(meta))[row, col]


def call_for(idc_area_mm2: float, min_area_mm2: float) -> str:
    return "IDC" if idc_area_mm2 >= min_area_mm2 else "no IDC"


def _row(level, patient_id, slide_id, slides, patches, stats: ProbStats | None, area, call, status, error) -> dict:
    s = asdict(stats) if stats else dict.fromkeys(f.name for f in fields(ProbStats))
    return {
        "level": level,
        "patient_id": patient_id,
        "slide_id": slide_id,
        "slides": slides,
        "patches": patches,
        "tissue_patches": s["tissue_patches"],
        "idc_patches": s["idc_patches"],
        "idc_fraction": s["idc_fraction"],
        "idc_area_mm2": area,
        "mean_prob": s["mean_prob"],
        "max_prob": s["max_prob"],
        "p95_prob": s["p95_prob"],
        "call": call,
        "status": status,
        "error": error,
    }


def read_probs(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(prob_idc, col, row) of a predictions file."""
    try:
        table = pq.read_table(path, columns=["prob_idc", "col", "row"])
    except (OSError, KeyError, pa.ArrowException) as e:
        raise SummaryError(f"{path}: cannot read prob_idc, col and row: {e}") from e
    return tuple(table.column(c).to_numpy() for c in ("prob_idc", "col", "row"))


def load_meta(path: Path) -> SlideMeta:
    try:
        return read_slide_meta(path)
    except (OSError, KeyError, TypeError, ValueError, pa.ArrowException) as e:
        raise SummaryError(
            f"{path}: no valid idcmap slide metadata ({type(e).__name__}: {e}); re-score the slide"
        ) from e


@dataclass
class _Patient:
    """Accumulates one patient's slides."""

    probs: list = field(default_factory=list)
    patches: int = 0
    idc_patches: int = 0
    area: float = 0.0
    done: int = 0
    any_idc: bool = False
    failed: list = field(default_factory=list)  # (slide_id, error)


def slide_row(meta: SlideMeta, probs: np.ndarray, col, row) -> dict:
    """Pure: the summary row of one done slide."""
    stats = prob_stats(probs, int(slide_idc_mask(meta, col, row, probs).sum()))
    area = stats.idc_patches * patch_area_mm2(meta)
    return _row(
        "slide",
        meta.patient_id,
        meta.slide_id,
        1,
        meta.cols * meta.rows,
        stats,
        area,
        call_for(area, min_idc_area_mm2(meta)),
        "done",
        None,
    )


def failed_slide_row(failure: dict) -> dict:
    return _row(
        "slide",
        failure["patient_id"],
        failure["slide_id"],
        1,
        None,
        None,
        None,
        None,
        "failed",
        failure.get("error") or "unknown error",
    )


def _patient_row(patient_id: str, acc: _Patient) -> dict:
    slides = acc.done + len(acc.failed)
    error = "; ".join(f"{sid}: {err}" for sid, err in acc.failed) or None
    if error:
        error = f"{len(acc.failed)} of {slides} slides failed: {error}"
    if acc.done == 0:
        return _row("patient", patient_id, None, slides, None, None, None, None, "failed", error)
    probs = np.concatenate(acc.probs) if acc.probs else np.empty(0, np.float32)
    stats = prob_stats(probs, acc.idc_patches)
    return _row(
        "patient",
        patient_id,
        None,
        slides,
        acc.patches,
        stats,
        acc.area,
        "IDC" if acc.any_idc else "no IDC",
        "done",
        error,
    )


def summary_rows(job_dir) -> list[dict]:
    """Slide and patient rows, ordered by patient id, patient row first, then slides by id."""
    patients: dict[str, _Patient] = defaultdict(_Patient)
    slide_rows: dict[tuple[str, str], dict] = {}
    failures = read_failures(JobDir(job_dir))
    for path in JobDir(job_dir).prediction_files():
        try:
            meta = load_meta(path)
            probs, col, grid_row = read_probs(path)
        except SummaryError as e:  # a damaged file: the slide counts as failed, the others go on
            failures.append({"patient_id": path.parent.name, "slide_id": path.stem, "error": str(e)})
            continue
        row = slide_row(meta, probs, col, grid_row)
        slide_rows[(meta.patient_id, meta.slide_id)] = row
        acc = patients[meta.patient_id]
        acc.probs.append(probs.astype(np.float32, copy=False))
        acc.patches += row["patches"]
        acc.idc_patches += row["idc_patches"]
        acc.area += row["idc_area_mm2"]
        acc.done += 1
        acc.any_idc |= row["call"] == "IDC"
    for failure in failures:
        key = (failure["patient_id"], failure["slide_id"])
        if key in slide_rows:  # a stale record of a slide that later succeeded
            continue
        slide_rows[key] = failed_slide_row(failure)
        patients[key[0]].failed.append((key[1], slide_rows[key]["error"]))
    rows = [_patient_row(pid, acc) for pid, acc in patients.items()] + list(slide_rows.values())
    return sorted(rows, key=lambda r: (r["patient_id"], r["level"] != "patient", r["slide_id"] or ""))


def build_summaries(job_dir) -> pa.Table:
    """The SUMMARIES table of a job folder: one row per slide (done and failed) and per patient."""
    return pa.Table.from_pylist(summary_rows(job_dir), schema=SUMMARIES)


def write_summaries(job_dir) -> Path:
    """Build the summaries and write them atomically to ``JOB_DIR/summaries.parquet``.

    An existing file with the same rows is left untouched, so re-running a finished job changes
    no file.
    """
    path = JobDir(job_dir).summaries
    table = build_summaries(job_dir)
    if path.is_file():
        try:
            if pq.read_table(path).equals(table):
                return path
        except (OSError, pa.ArrowException):
            pass  # unreadable: rewrite it
    write_parquet_atomic(table, path)
    return path
