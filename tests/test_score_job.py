"""The scoring job end to end: rows and probabilities, failures, resume, kill and re-run, lock, query."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from click.testing import CliRunner

from idcmap.jobs.cli import cli
from idcmap.jobs.jobdir.layout import JobDir
from idcmap.jobs.jobdir.lock import job_lock
from idcmap.jobs.jobdir.schema import META_KEY, PREDICTIONS, SUMMARIES, read_slide_meta
from idcmap.model import load_bundle, make_backend
from idcmap.model.bundle import write_manifest
from idcmap.model.scoring import with_context
from idcmap.slide_tiling import TilingSpec, iter_patches, open_slide, plan_slide

from .conftest import REPO

EXAMPLES = REPO / "examples" / "slides"


def run(*args):
    """Invoke the CLI in-process; ``output`` holds what the user sees (stdout and stderr)."""
    return CliRunner().invoke(cli, [str(a) for a in args])


ROW_ORDER = [("patient_id", "ascending"), ("slide_id", "ascending"), ("row", "ascending"), ("col", "ascending")]


def read_job_table(job_dir: Path):
    return pd.read_parquet(job_dir / "predictions").pipe(pa.Table.from_pandas, preserve_index=False).sort_by(ROW_ORDER)


def test_examples_end_to_end_with_a_corrupt_and_a_missing_slide(tmp_path, bundle, ray_session):
    corrupt = tmp_path / "corrupt.svs"
    corrupt.write_bytes(b"II*\x00" + os.urandom(2000))
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(
        "patient_id,slide_path\n"
        f"P1,{EXAMPLES / 'patient-8863.tiff'}\n"
        f"P2,{EXAMPLES / 'patient-8916.tiff'}\n"
        f"P3,{corrupt}\n"
        "P4,does-not-exist.svs\n"
    )
    job = tmp_path / "job"
    result = run("score", manifest, "--out", job)
    assert result.exit_code == 1, result.output  # some slides failed
    assert "FAILED P3/corrupt" in result.output and "FAILED P4/does-not-exist" in result.output

    files = JobDir(job).prediction_files()
    assert [f.relative_to(job).as_posix() for f in files] == [
        "predictions/P1/patient-8863.parquet",
        "predictions/P2/patient-8916.parquet",
    ]
    backend = make_backend(bundle, "onnx")
    for f in files:
        table = pq.read_table(f)
        assert table.schema.remove_metadata() == PREDICTIONS
        meta = read_slide_meta(f)
        assert meta.bundle_sha256 == bundle.sha256 and meta.job_spec["backend"] == "onnx"
        # one row per tissue patch, each probability the bundle's own prediction on those pixels
        with open_slide(meta.source) as reader:
            plan = plan_slide(reader, TilingSpec())
            batches = list(iter_patches(reader, plan, bundle.neighbourhood))  # as the network takes them
        cols = np.concatenate([b.cols for b in batches])
        rows = np.concatenate([b.rows for b in batches])
        direct = backend.predict(np.concatenate([b.pixels for b in batches]))
        order = np.lexsort((cols, rows))
        assert table.num_rows == len(cols)
        assert table["col"].to_numpy().tolist() == cols[order].tolist()
        assert table["row"].to_numpy().tolist() == rows[order].tolist()
        assert np.abs(table["prob_patch"].to_numpy() - direct[order]).max() <= 1e-5
        # the final score mixes in the slide's neighbours, then sets it against the slide's baseline
        final = with_context(direct[order], rows[order], cols[order], None, bundle.context_weight, bundle.baseline)
        assert np.abs(table["prob_idc"].to_numpy() - final).max() <= 1e-5
        assert (table["x"].to_numpy() == 50 * table["col"].to_numpy()).all()

    failures = {f.parent.name: json.loads(f.read_text()) for f in (job / "failed").glob("*/*.json")}
    assert set(failures) == {"P3", "P4"}
    assert failures["P4"]["error"].endswith("does-not-exist.svs: no such file or folder")
    assert str(corrupt) in failures["P3"]["error"]

    summaries = pq.read_table(job / "summaries.parquet")
    assert summaries.schema.remove_metadata() == SUMMARIES
    by_slide = {r["slide_id"]: r for r in summaries.to_pylist() if r["level"] == "slide"}
    assert by_slide["patient-8863"]["tissue_patches"] == pq.read_metadata(files[0]).num_rows
    assert by_slide["corrupt"]["status"] == "failed" and by_slide["corrupt"]["error"]
    assert (job / "report" / "index.html").exists()
    assert (job / "maps" / "P1" / "patient-8863" / "idc.geojson").exists()
    job_json = json.loads((job / "job.json").read_text())
    assert job_json["bundle"]["sha256"] == bundle.sha256 and job_json["runs"][-1]["failed"] == 2

    # status and query read the folder
    status = run("status", job)
    assert "2 done, 2 failed, 0 pending, 4 in all" in status.output
    assert "patches  1,150 scored" in status.output
    q = run("query", job, "SELECT patient_id, count(*) AS n FROM predictions GROUP BY 1 ORDER BY 1", "--format", "json")
    assert json.loads(q.output) == [{"patient_id": "P1", "n": 979}, {"patient_id": "P2", "n": 171}]
    q = run(
        "query", job, "SELECT count(*) FROM summaries WHERE status = 'failed' AND level = 'slide'", "--format", "csv"
    )
    assert q.output.strip().splitlines()[-1] == "2"
    assert "query failed" in run("query", job, "SELECT nonsense FROM nowhere").output

    # a re-run retries only the failures; the done slides' files are not touched
    stamps = {f: f.stat().st_mtime_ns for f in files}
    again = run("score", manifest, "--out", job)
    assert again.exit_code == 1 and "scoring 2 of 4 slides" in again.output
    assert {f: f.stat().st_mtime_ns for f in files} == stamps


def test_finished_job_rerun_does_nothing_and_changes_no_file(tmp_path, bundle, ray_session):
    job = tmp_path / "job"
    assert run("score", EXAMPLES / "patient-8916.tiff", "--out", job).exit_code == 0
    before = {p: p.stat().st_mtime_ns for p in job.rglob("*") if p.is_file()}
    assert all(p.stat().st_mode & 0o007 == 0 for p in job.rglob("*")), "results are not for everyone"
    result = run("score", EXAMPLES / "patient-8916.tiff", "--out", job)
    assert result.exit_code == 0 and "nothing to score" in result.output
    after = {p: p.stat().st_mtime_ns for p in job.rglob("*") if p.is_file()}
    assert before == after


def test_a_one_cpu_ray_still_tiles_and_scores(tmp_path, bundle):
    """A 1-CPU Ray gets one scorer actor that plans, tiles and scores (an earlier design once waited
    forever there)."""
    job = tmp_path / "job"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "idcmap",
            "score",
            str(EXAMPLES / "patient-8916.tiff"),
            "--out",
            str(job),
            "--num-cpus",
            "1",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert pq.read_metadata(job / "predictions" / "patient-8916" / "patient-8916.parquet").num_rows == 171


def test_second_writer_is_refused(tmp_path, bundle):
    job = tmp_path / "job"
    with job_lock(JobDir(job)):
        result = run("score", EXAMPLES / "patient-8916.tiff", "--out", job)
    assert result.exit_code == 1
    assert f"another idcmap score (pid {os.getpid()} on {socket.gethostname()}) is writing this job" in result.output


def test_a_job_folder_where_files_cannot_be_locked_is_refused_in_one_line(tmp_path, monkeypatch):
    """flock on NFS mounted without locking answers ENOLCK: score refuses before writing anything."""
    import errno
    import fcntl

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    job = tmp_path / "job"
    result = run("score", EXAMPLES / "patient-8916.tiff", "--out", job)
    assert result.exit_code == 1
    assert result.output == (
        f"Error: {job / '.lock'}: this file system cannot lock files ({os.strerror(errno.ENOLCK)}), so two "
        "writers could not be kept apart; put the job folder where locks work (a local disk, NFS with locking)\n"
    )
    assert not JobDir(job).prediction_files() and not (job / "job.json").exists()


def test_kill_midway_and_rerun_gives_exactly_the_uninterrupted_rows(tmp_path, rebuilt, reference_job):
    """SIGKILL the command while it writes; the re-run completes the job with no partial file."""
    expected = read_job_table(reference_job)
    assert len(JobDir(reference_job).prediction_files()) == 10

    job = tmp_path / "killed"
    cmd = [sys.executable, "-m", "idcmap", "score", str(rebuilt / "slides"), "--out", str(job), "--num-cpus", "2"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and len(JobDir(job).prediction_files()) < 3 and proc.poll() is None:
        time.sleep(0.2)
    status = run("status", job).output.splitlines()  # while it runs: its rate and ETA
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its embedded Ray, mid-job
    proc.wait()
    done_at_kill = len(JobDir(job).prediction_files())
    assert 0 < done_at_kill < 10, "the kill should land mid-job"
    for f in JobDir(job).prediction_files():  # whatever is visible is complete
        assert pq.read_metadata(f).metadata[META_KEY]
    assert status[0] == f"{job}: running"
    done, pending = map(int, re.match(r"  slides +(\d+) done, 0 failed, (\d+) pending, 10 in all$", status[1]).groups())
    assert 3 <= done <= done_at_kill and done + pending == 10
    rate = re.match(rf"  rate +([\d,]+) patches/s in this run; ETA \d+\.\d min for {pending} slides$", status[3])
    assert rate and int(rate.group(1).replace(",", "")) > 0

    assert run("score", rebuilt / "slides", "--out", job).exit_code == 0
    got = read_job_table(job)
    assert got.num_rows == expected.num_rows
    for name in ("patient_id", "slide_id", "x", "y", "col", "row", "tissue_fraction"):
        assert got[name].equals(expected[name]), name
    assert np.abs(got["prob_idc"].to_numpy() - expected["prob_idc"].to_numpy()).max() <= 1e-6
    assert not list(job.rglob("*.tmp"))


def test_report_rebuilds_maps_and_report_from_the_parquet_alone(tmp_path, bundle, ray_session):
    import shutil

    job = tmp_path / "job"
    assert run("score", EXAMPLES / "patient-8916.tiff", "--out", job).exit_code == 0
    built = {p.relative_to(job): p.read_bytes() for p in (job / "maps").rglob("*") if p.is_file()}
    built[Path("report/index.html")] = (job / "report" / "index.html").read_bytes()
    shutil.rmtree(job / "maps")
    shutil.rmtree(job / "report")
    (job / "summaries.parquet").unlink()
    result = run("report", job)
    assert result.exit_code == 0 and result.output.strip().endswith("report/index.html")
    rebuilt = {
        p.relative_to(job): p.read_bytes() for p in (job / "maps").rglob("*") if p.is_file() and p.name != "inputs.json"
    }
    rebuilt[Path("report/index.html")] = (job / "report" / "index.html").read_bytes()
    assert rebuilt == {k: v for k, v in built.items() if k.name != "inputs.json"}
    assert pq.read_table(job / "summaries.parquet").num_rows == 2  # slide row + patient row
    assert "not an idcmap job folder" in run("report", tmp_path / "nothing").output


def test_keras_backend_scores_the_shipped_bundle_like_onnx(tmp_path, bundle, ray_session):
    slide = EXAMPLES / "patient-8916.tiff"
    assert run("score", slide, "--out", tmp_path / "onnx").exit_code == 0
    result = run("score", slide, "--out", tmp_path / "keras", "--backend", "keras")
    assert result.exit_code == 0, result.output
    onnx, keras = read_job_table(tmp_path / "onnx"), read_job_table(tmp_path / "keras")
    assert onnx.num_rows == keras.num_rows == 171 and onnx["col"].equals(keras["col"])
    assert np.abs(onnx["prob_idc"].to_numpy() - keras["prob_idc"].to_numpy()).max() < 1e-4


def test_gpu_scorers_run_beside_the_cpu_ones_and_infer_on_the_cpu_without_cuda(
    tmp_path, bundle, rebuilt, reference_job
):
    """The session's Ray has one GPU that is not there: ``--gpus-per-actor 0.5`` starts two GPU
    scorers beside the two CPU ones; ONNX Runtime here has no CUDA provider, so they infer on the
    CPU and say so; the rows are the CPU-only job's."""
    job = tmp_path / "gpu"
    result = run("score", rebuilt / "slides", "--out", job, "--gpus-per-actor", "0.5")
    assert result.exit_code == 0, result.output
    assert result.output.count("its GPU scorers infer on the CPU: the onnx backend found no usable GPU there") == 1
    (node,) = json.loads((job / "job.json").read_text())["runs"][-1]["nodes"].values()
    assert (node["cpus"], node["gpus"], node["gpu_scorers"], node["gpu_device"]) == (2, 1, 2, "CPU")
    got, expected = read_job_table(job), read_job_table(reference_job)
    assert (
        got.num_rows == expected.num_rows and got["col"].equals(expected["col"]) and got["row"].equals(expected["row"])
    )
    assert np.abs(got["prob_idc"].to_numpy() - expected["prob_idc"].to_numpy()).max() <= 1e-6
    status = run("status", job)
    assert (
        f"2 CPUs, 1 GPUs, 2 GPU scorers (inferring on CPU), 10 slides planned, {got.num_rows:,} patches"
        in status.output
    )


def test_a_backend_the_bundle_does_not_offer_is_refused_before_anything_is_written(tmp_path, bundle):
    """The shipped bundle, re-written as if its int8 model had failed its accuracy check."""
    folder = tmp_path / "bundle"
    shutil.copytree(bundle.path, folder)
    meta = json.loads((folder / "model.json").read_text())
    reason = "int8 validation ROC AUC 0.9000 is more than 0.005 below fp32 0.9500"
    meta["backends"]["onnx-int8"].update(file=None, offered=False, reason=reason)
    (folder / "model.int8.onnx").unlink(missing_ok=True)
    write_manifest(folder, meta)
    assert "onnx-int8" not in load_bundle(folder).backends
    args = ("--out", tmp_path / "job", "--model", folder, "--backend", "onnx-int8")
    result = run("score", EXAMPLES / "patient-8916.tiff", *args)
    assert result.exit_code == 1
    assert result.output == f"Error: backend 'onnx-int8' is not offered by {folder}: {reason}\n"
    assert not (tmp_path / "job").exists()
