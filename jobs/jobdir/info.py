"""JOB_DIR/job.json: the spec, the model, package versions, the slides, and every run's times and counts."""

from __future__ import annotations

import json
import platform
from importlib.metadata import PackageNotFoundError, version

from idcmap.errors import JobError
from idcmap.jobs.jobdir.layout import JobDir, write_bytes_atomic

PACKAGES = (
    "idcmap",
    "ray",
    "onnxruntime",
    "tensorflow-cpu",
    "keras",
    "openslide-python",
    "openslide-bin",
    "numpy",
    "pyarrow",
    "opencv-python-headless",
)


def package_versions() -> dict:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def read_job(job: JobDir) -> dict:
    """``job.json`` as a dict ({} when there is none yet)."""
    path = job.job_json
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise JobError(f"{path}: not valid JSON ({' '.join(str(e).split())}); fix or remove it") from None
    return data if isinstance(data, dict) else {}


def write_job(job: JobDir, data: dict) -> None:
    write_bytes_atomic(job.job_json, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode())
