"""What the viewer shows of a job folder, read only: its slides with their summaries and status,
each slide's patch grid, probability overlay, IDC regions and stored thumbnail.

Slides are found by the ids in the job's own records (``job.json`` and the predictions files'
metadata), never by a path taken from a request; a slide's file is opened only through the source
``job.json`` recorded for it, and only when the job is not pseudonymised (its records then hold
pseudonyms alone: the viewer shows the stored thumbnail instead).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq

from idcmap.jobs.jobdir.info import read_job
from idcmap.jobs.jobdir.layout import JobDir
from idcmap.jobs.jobdir.lock import is_locked
from idcmap.jobs.jobdir.schema import SlideMeta, parquet_problem, predictions_problem
from idcmap.jobs.render.maps import COLORMAP
from idcmap.jobs.render.summaries import build_summaries, downsample0, load_meta
from idcmap.jobs.service import JobStatus, job_status

PATCH_COLUMNS = ["x", "y", "col", "row", "tissue_fraction", "prob_idc", "prob_patch"]


@dataclass(frozen=True)
class Slide:
    """One slide of a served job, as its records know it."""

    patient_id: str
    slide_id: str
    source: str | None  # the file to open, None when the job holds no path (pseudonymised)


class SlideData:
    """A done slide's predictions, loaded once: metadata and the patch table keyed by grid cell."""

    def __init__(self, path: Path):
        self.meta: SlideMeta = load_meta(path)
        table = pq.read_table(path, columns=PATCH_COLUMNS)
        self.columns = {c: table.column(c).to_numpy() for c in PATCH_COLUMNS}
        self.index = {(int(c), int(r)): i for i, (c, r) in enumerate(zip(self.columns["col"], self.columns["row"]))}
        dsx, dsy = downsample0(self.meta)
        self.step0 = (self.meta.stride * dsx, self.meta.stride * dsy)  # level-0 px per grid cell
        # a cell is min(stride, patch) a side, centred on its patch (as the maps count it)
        margin = max(0, self.meta.patch_size - self.meta.stride) / 2
        self.origin0 = (margin * dsx, margin * dsy)

    def patch_at(self, x: float, y: float) -> dict | None:
        """The tissue patch whose grid cell holds level-0 point (x, y), or None."""
        col = int(np.floor((x - self.origin0[0]) / self.step0[0]))
        row = int(np.floor((y - self.origin0[1]) / self.step0[1]))
        i = self.index.get((col, row))
        if i is None:
            return None
        return {k: (int(v[i]) if k in ("x", "y", "col", "row") else float(v[i])) for k, v in self.columns.items()}

    def overlay_png(self) -> bytes:
        """The probability of every tissue patch as one RGBA pixel per grid cell (inferno, as the maps)."""
        grid = np.zeros((self.meta.rows, self.meta.cols), np.uint8)
        alpha = np.zeros_like(grid)
        rows, cols = self.columns["row"], self.columns["col"]
        grid[rows, cols] = np.clip(np.round(self.columns["prob_idc"] * 255), 0, 255).astype(np.uint8)
        alpha[rows, cols] = 255  # off tissue: transparent (the page fades the rest)
        bgra = cv2.cvtColor(cv2.applyColorMap(grid, COLORMAP), cv2.COLOR_BGR2BGRA)
        bgra[..., 3] = alpha
        ok, data = cv2.imencode(".png", bgra)
        assert ok, "PNG encoding of a uint8 image does not fail"
        return data.tobytes()

    def overlay_box(self) -> list[float]:
        """Where the overlay lies on the slide: [x, y, width, height] in level-0 px."""
        return [*self.origin0, self.meta.cols * self.step0[0], self.meta.rows * self.step0[1]]


class ServedJob:
    """One job folder, read only."""

    #: how long the list of a job's slides is reused (every tile request looks its slide up)
    SLIDES_TTL_S = 2.0

    def __init__(self, root: Path, name: str):
        self.job, self.name = JobDir(root), name
        self._data: dict[Path, tuple[float, SlideData]] = {}
        self._slides: tuple[float, dict] = (-self.SLIDES_TTL_S, {})
        self._lock = threading.Lock()

    def record(self) -> dict:
        return read_job(self.job)

    def slides(self) -> dict[tuple[str, str], Slide]:
        """Every slide the job knows (job.json, and predictions files written by any run)."""
        with self._lock:
            read_at, known = self._slides
            if time.monotonic() - read_at < self.SLIDES_TTL_S:
                return known
        known = self._read_slides()
        with self._lock:
            self._slides = (time.monotonic(), known)
        return known

    def _read_slides(self) -> dict[tuple[str, str], Slide]:
        record = self.record()
        hidden = bool(record.get("privacy", {}).get("pseudonymized"))
        known = {
            (s["patient_id"], s["slide_id"]): Slide(s["patient_id"], s["slide_id"], None if hidden else s.get("source"))
            for s in record.get("slides", [])
        }
        for path in self.job.prediction_files():
            known.setdefault((path.parent.name, path.stem), Slide(path.parent.name, path.stem, None))
        return known

    def slide(self, patient_id: str, slide_id: str) -> Slide | None:
        return self.slides().get((patient_id, slide_id))

    def data(self, slide: Slide) -> SlideData | None:
        """The slide's predictions (None until it is done); reloaded when the file changes."""
        path = self.job.predictions(slide.patient_id, slide.slide_id)
        try:
            mtime = path.stat().st_mtime
        except OSError:
            return None
        with self._lock:
            cached = self._data.get(path)
            if cached and cached[0] == mtime:
                return cached[1]
        if predictions_problem(path) is not None:
            return None
        data = SlideData(path)
        with self._lock:
            self._data[path] = (mtime, data)
            for old in list(self._data)[:-16]:  # a few slides' tables at a time
                del self._data[old]
        return data

    def regions(self, slide: Slide) -> dict:
        """The slide's IDC regions (GeoJSON, level-0 px); empty until its maps are built."""
        path = self.job.maps(slide.patient_id, slide.slide_id) / "idc.geojson"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return {"type": "FeatureCollection", "features": []}

    def status(self) -> JobStatus:
        return job_status(self.job.root)

    def summary_rows(self) -> tuple[list[dict], list[dict]]:
        """(a row per patient, a row per slide): the summary columns of what is done, the status
        and reason of the rest; failure reasons name their files without the folders."""
        path = self.job.summaries
        if not is_locked(self.job) and path.exists() and parquet_problem(path) is None:
            rows = pq.read_table(path).to_pylist()
        else:  # being scored, or never summarised: from the predictions files as they are
            rows = build_summaries(self.job.root).to_pylist()
        slides = {(r["patient_id"], r["slide_id"]): r for r in rows if r["level"] == "slide"}
        folders = set()
        for key, slide in self.slides().items():
            slides.setdefault(key, {"patient_id": key[0], "slide_id": key[1], "status": "pending"})
            if slide.source:
                folders.add(str(Path(slide.source).parent) + "/")
        patients = [r for r in rows if r["level"] == "patient"]
        for row in [*patients, *slides.values()]:
            for folder in folders:
                if row.get("error"):
                    row["error"] = row["error"].replace(folder, "")
        return sorted(patients, key=lambda r: r["patient_id"]), sorted(slides.values(), key=lambda r: r["slide_id"])
