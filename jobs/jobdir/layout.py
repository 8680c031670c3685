"""The job folder's layout, in one place, and the one way files in it are written.

    JOB_DIR/job.json                              the spec, the model, versions, slides, runs
    JOB_DIR/.lock                                 the writer's flock (holds its pid)
    JOB_DIR/predictions/<patient>/<slide>.parquet one row per tissue patch
    JOB_DIR/failed/<patient>/<slide>.json         why a slide failed (removed when it succeeds)
    JOB_DIR/summaries.parquet                     one row per slide and per patient
    JOB_DIR/maps/<patient>/<slide>/               prob.npy, heatmap.png, overlay.png, idc.geojson
    JOB_DIR/report/index.html                     the report

Every file is written under a hidden temporary name in its own folder and renamed into place when
complete (:mod:`idcmap.atomic`), so a reader, or a resumed job, never sees a partial file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from idcmap.atomic import TEMP_SUFFIX, atomic_path, write_bytes_atomic

__all__ = ["JobDir", "atomic_path", "write_bytes_atomic"]


@dataclass(frozen=True)
class JobDir:
    """Every path of one job folder."""

    root: Path

    def __init__(self, root: os.PathLike | str):
        object.__setattr__(self, "root", Path(root))

    def __str__(self) -> str:
        return str(self.root)

    def __fspath__(self) -> str:
        return str(self.root)

    @property
    def name(self) -> str:
        """The job id: the folder's name."""
        return self.root.resolve().name

    @property
    def job_json(self) -> Path:
        return self.root / "job.json"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    @property
    def predictions_dir(self) -> Path:
        return self.root / "predictions"

    def predictions(self, patient_id: str, slide_id: str) -> Path:
        return self.predictions_dir / patient_id / f"{slide_id}.parquet"

    def prediction_files(self) -> list[Path]:
        """Complete predictions files (temporary files are hidden and never listed)."""
        return sorted(p for p in self.predictions_dir.glob("*/*.parquet") if p.is_file())

    def failure(self, patient_id: str, slide_id: str) -> Path:
        return self.root / "failed" / patient_id / f"{slide_id}.json"

    def failure_files(self) -> list[Path]:
        return sorted((self.root / "failed").glob("*/*.json"))

    @property
    def summaries(self) -> Path:
        return self.root / "summaries.parquet"

    def maps(self, patient_id: str, slide_id: str) -> Path:
        return self.root / "maps" / patient_id / slide_id

    @property
    def report(self) -> Path:
        return self.root / "report" / "index.html"

    def is_job(self) -> bool:
        """Whether this folder was written by ``idcmap score``."""
        return self.job_json.exists() or self.predictions_dir.exists()

    def temporary_files(self) -> list[Path]:
        """Files a killed writer left under their temporary names."""
        return sorted(self.root.rglob(f".*{TEMP_SUFFIX}"))
