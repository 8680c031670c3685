"""The wheel: one `idcmap` namespace, the default bundle inside it, and a job scored from a fresh
virtual environment in a folder outside the source tree."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile

import pyarrow.parquet as pq
import pytest

from .conftest import REPO

EXAMPLE = REPO / "examples" / "slides" / "patient-8916.tiff"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """Built from a copy of the source tree, so no stale build/ folder can leak into it."""
    out = tmp_path_factory.mktemp("wheel")
    src = out / "src"
    shutil.copytree(
        REPO,
        src,
        ignore=shutil.ignore_patterns(
            ".git", "build", "dist", "out", "runs", "*.egg-info", "__pycache__", ".pytest_cache"
        ),
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(src)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (path,) = out.glob("idcmap-*.whl")
    return path


def test_wheel_installs_one_namespace_with_the_default_bundle(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"idcmap", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"}
    for sub in ("model", "jobs", "slide_tiling", "cluster"):  # every (sub-)package of the source tree
        for init in (REPO / sub).rglob("__init__.py"):
            assert f"idcmap/{init.relative_to(REPO).as_posix()}" in names
    bundle = {n.split("/")[-1] for n in names if n.startswith("idcmap/models/idc-default/")}
    files = json.loads((REPO / "models" / "idc-default" / "model.json").read_text())["files"]
    assert bundle == set(files) | {"model.json"}
    assert not any(n.startswith("idcmap/models/seed-cnn/") for n in names)


def test_wheel_in_a_fresh_venv_scores_from_another_folder(wheel, tmp_path):
    """Dependencies come from the system site-packages; idcmap itself only from the wheel."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=120)
    subprocess.run(
        [venv / "bin" / "python", "-m", "pip", "install", "-q", "--no-deps", str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RAY_ADDRESS")}
    where = subprocess.run(
        [
            venv / "bin" / "python",
            "-c",
            "import idcmap.model as m, idcmap.models as d; print(m.__file__); print(d.DEFAULT_MODEL)",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    module, default = where.stdout.split()
    assert module.startswith(str(venv)) and default.startswith(str(venv))

    proc = subprocess.run(
        [venv / "bin" / "idcmap", "score", str(EXAMPLE), "--out", "job", "--num-cpus", "2"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert pq.read_metadata(tmp_path / "job" / "predictions" / "patient-8916" / "patient-8916.parquet").num_rows == 171
    job = json.loads((tmp_path / "job" / "job.json").read_text())
    shipped = json.loads((REPO / "models" / "idc-default" / "model.json").read_text())
    assert job["bundle"]["path"] == default and job["bundle"]["sha256"] == shipped["manifest_sha256"]
    assert (tmp_path / "job" / "report" / "index.html").is_file()


def test_code_shipped_to_cluster_workers_imports_as_idcmap(tmp_path):
    """The py_modules folder of a cluster job: `idcmap` with every sub-package a worker imports,
    importable on its own (a worker's import finds it first on its path)."""
    from idcmap.cluster import PACKAGES, runtime_env

    env = runtime_env(tmp_path)
    (folder,) = env["py_modules"]
    assert os.path.basename(folder) == "idcmap"
    run_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": os.path.dirname(folder)}
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import importlib; print(*(importlib.import_module('idcmap.' + p).__file__ for p in {PACKAGES!r}))",
        ],
        cwd=tmp_path,
        env=run_env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert len(out) == len(PACKAGES) and all(f.startswith(folder + os.sep) for f in out)
