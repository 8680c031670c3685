"""Shared test fixtures: the real data folder and one Ray instance per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def shared_path(*parts) -> Path:
    """A path under ../shared/data; skips the test with the reason when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path} is absent (needs ../shared/data beside the repo)")
    return path


@pytest.fixture(scope="session")
def bundle():
    """The shipped model bundle, loaded and verified."""
    from idcmap.model import load_bundle
    from idcmap.models import DEFAULT_MODEL

    if not (DEFAULT_MODEL / "model.json").exists():
        pytest.skip(f"the shipped model bundle {DEFAULT_MODEL} is absent")
    return load_bundle(DEFAULT_MODEL)


@pytest.fixture(scope="session")
def rebuilt(tmp_path_factory):
    """Ten patients of ../shared/data rebuilt as 2.5x pyramidal TIFFs (slides/P/P.tiff) with masks."""
    from idcmap.slide_tiling import build_slide

    patients = sorted(shared_path("idc", "patients").iterdir())[:10]
    root = tmp_path_factory.mktemp("rebuilt")
    for p in patients:
        (root / "slides" / p.name).mkdir(parents=True)
        build_slide(p, root / "slides" / p.name / f"{p.name}.tiff", root / f"{p.name}-mask.png")
    return root


@pytest.fixture(scope="session")
def reference_job(tmp_path_factory, bundle, rebuilt, ray_session):
    """The rebuilt patients scored once, uninterrupted: what every faulty run must equal."""
    from click.testing import CliRunner

    from idcmap.jobs.cli import cli

    job = tmp_path_factory.mktemp("reference") / "job"
    result = CliRunner().invoke(cli, ["score", str(rebuilt / "slides"), "--out", str(job)])
    assert result.exit_code == 0, result.output
    return job


@pytest.fixture(scope="session")
def ray_session():
    """Ray started once for the whole test session, with 2 CPUs and a GPU that is not there (a
    resource Ray schedules by; nothing here has CUDA)."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


SERVE_KEY = "0123456789abcdef-serve-test-key"


@pytest.fixture(scope="session")
def served_jobs(tmp_path_factory, bundle, ray_session):
    """Jobs for `idcmap serve`: the two example slides ('job'), and one of them pseudonymised with
    SERVE_KEY ('private')."""
    from click.testing import CliRunner

    from idcmap.jobs.cli import cli
    from idcmap.jobs.pseudonym import KEY_ENV

    root = tmp_path_factory.mktemp("served")
    slides = REPO / "examples" / "slides"
    result = CliRunner().invoke(cli, ["score", str(slides), "--out", str(root / "job")])
    assert result.exit_code == 0, result.output
    args = ["score", str(slides / "patient-8916.tiff"), "--out", str(root / "private"), "--pseudonymize"]
    result = CliRunner().invoke(cli, args, env={KEY_ENV: SERVE_KEY})
    assert result.exit_code == 0, result.output
    return root / "job", root / "private"
