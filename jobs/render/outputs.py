"""Everything people look at, built from a job's Parquet results alone.

:func:`build_outputs` writes ``summaries.parquet``, every done slide's maps and
``report/index.html``. Both ``idcmap score`` (at the end) and ``idcmap report`` call it. It is
idempotent: unchanged inputs give byte-identical files, and files whose bytes would not change are
not rewritten. A slide's maps are rebuilt only when its predictions file changed (size and mtime,
recorded in ``maps/P/SLIDE/inputs.json``) or :data:`MAPS_VERSION` changed.
"""

from __future__ import annotations

import json
from pathlib import Path

from idcmap.jobs.jobdir.layout import JobDir, write_bytes_atomic
from idcmap.jobs.render.maps import MAP_FILES, MapError, write_slide_maps
from idcmap.jobs.render.report import write_report
from idcmap.jobs.render.summaries import SummaryError, load_meta, write_summaries

MAPS_VERSION = 1  # bump when the map files change for the same predictions
MAPS_MANIFEST = "inputs.json"


def input_stamp(job_dir, predictions_file: Path) -> dict:
    """What the maps of a slide were built from: the predictions file, its size and mtime."""
    st = predictions_file.stat()
    return {
        "maps_version": MAPS_VERSION,
        "predictions": predictions_file.relative_to(job_dir).as_posix(),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
    }


def maps_up_to_date(out_dir: Path, stamp: dict) -> bool:
    manifest = out_dir / MAPS_MANIFEST
    if not all((out_dir / name).is_file() for name in MAP_FILES) or not manifest.is_file():
        return False
    try:
        return json.loads(manifest.read_text()) == stamp
    except ValueError:
        return False


def build_outputs(job_dir, force: bool = False) -> dict:
    """Summaries, maps of every done slide, and the report of ``job_dir``.

    Returns ``{"summaries": Path, "report": Path, "maps_built": [Path], "maps_skipped": [Path],
    "errors": [str]}``; a slide whose maps cannot be built is listed in ``errors`` (the message
    names its file) and the others are still built. ``force`` rebuilds every slide's maps.
    """
    job_dir = Path(job_dir)
    summaries = write_summaries(job_dir)
    built, skipped, errors = [], [], []
    for path in JobDir(job_dir).prediction_files():
        try:
            meta = load_meta(path)
            out = JobDir(job_dir).maps(meta.patient_id, meta.slide_id)
            stamp = input_stamp(job_dir, path)
            if not force and maps_up_to_date(out, stamp):
                skipped.append(out)
                continue
            write_slide_maps(job_dir, path, meta)
            write_bytes_atomic(out / MAPS_MANIFEST, (json.dumps(stamp, sort_keys=True) + "\n").encode())
            built.append(out)
        except (MapError, SummaryError) as e:
            errors.append(str(e))
    report = write_report(job_dir)
    return {"summaries": summaries, "report": report, "maps_built": built, "maps_skipped": skipped, "errors": errors}
