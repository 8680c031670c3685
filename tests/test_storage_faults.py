"""Damaged files in a job folder (an interrupted copy, a failing shared mount): every command names
the bad file in one line and goes on with the rest; `score` sets a damaged slide aside and scores
it again."""

from __future__ import annotations

import shutil

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from idcmap.jobs.cli import cli

from .conftest import REPO

SLIDES = REPO / "examples" / "slides"
CUT = "predictions/patient-8863/patient-8863.parquet"


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def scored(tmp_path_factory, bundle, ray_session):
    job = tmp_path_factory.mktemp("scored") / "job"
    assert run("score", SLIDES, "--out", job).exit_code == 0
    return job


@pytest.fixture
def job(scored, tmp_path):
    """A copy of the scored job with one predictions file cut to 3,000 bytes."""
    job = tmp_path / "job"
    shutil.copytree(scored, job)
    path = job / CUT
    path.write_bytes(path.read_bytes()[:3000])
    return job


def test_status_and_query_name_the_damaged_file_and_go_on(job):
    status = run("status", job)
    assert status.exit_code == 0
    assert "  slides   1 done, 0 failed, 1 pending, 2 in all" in status.output
    assert f"  DAMAGED  {job / CUT}: unreadable Parquet (" in status.output
    query = run("query", job, "select slide_id, count(*) as n from predictions group by 1", "--format", "csv")
    assert query.exit_code == 0
    assert query.output.startswith(f"WARNING {job / CUT}: unreadable Parquet (")
    assert query.output.splitlines()[1:] == ["slide_id,n", "patient-8916,171"]


def test_report_counts_the_damaged_slide_as_failed_and_builds_the_rest(job):
    result = run("report", job)
    assert result.exit_code == 0 and result.output.rstrip().endswith("report/index.html")
    rows = {r["slide_id"]: r for r in pq.read_table(job / "summaries.parquet").to_pylist() if r["level"] == "slide"}
    assert rows["patient-8916"]["status"] == "done"
    assert rows["patient-8863"]["status"] == "failed" and str(job / CUT) in rows["patient-8863"]["error"]


def test_score_sets_the_damaged_file_aside_and_scores_the_slide_again(job, scored):
    result = run("score", SLIDES, "--out", job)
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"WARNING {job / CUT}: unreadable Parquet (")
    assert "moved aside to patient-8863.parquet.damaged-" in result.output.splitlines()[0]
    assert "scoring 1 of 2 slides" in result.output
    assert pq.read_table(job / CUT).equals(pq.read_table(scored / CUT))
    assert len(list((job / CUT).parent.glob("patient-8863.parquet.damaged-*"))) == 1


def test_a_cut_job_json_and_summaries_are_one_line_each(job):
    text = (job / "job.json").read_text()
    (job / "job.json").write_text(text[: len(text) // 2])
    status = run("status", job)
    assert status.exit_code == 1 and status.output.startswith(f"Error: {job / 'job.json'}: not valid JSON (")
    assert len(status.output.splitlines()) == 1
    (job / "summaries.parquet").write_bytes((job / "summaries.parquet").read_bytes()[:500])
    query = run("query", job, "select count(*) as n from predictions", "--format", "csv")
    assert query.exit_code == 0 and query.output.splitlines()[-2:] == ["n", "171"]
    assert f"WARNING {job / 'summaries.parquet'}: unreadable Parquet (" in query.output
