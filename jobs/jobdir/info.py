"""JOB_DIR/job.json: the spec, the model, package versions, the slides, and every run's times and counts."""
from __future__ import annotations

import json
import os
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

PACKAGES = ("idcmap", "ray", "onnxruntime", "tensorflow-cpu", "keras", "openslide-python", "openslide-bin",
            "numpy", "pyarrow", "opencv-python-headless")


def package_versions() -> dict:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def job_json_path(job_dir) -> Path:
    return Path(job_dir) / "job.json"


def read_job(job_dir) -> dict:
    path = job_json_path(job_dir)
    return json.loads(path.read_text()) if path.exists() else {}


def write_job(job_dir, data: dict) -> None:
    path = job_json_path(job_dir)
    tmp = path.with_name(f".job.json.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)
