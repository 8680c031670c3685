"""On a real local Ray cluster (`ray start`: a head and worker nodes of 1 CPU each): scoring gives
the embedded run's rows, a worker node lost mid-job costs no slide and no row, `ray job submit`
runs a job, training runs its workers across nodes."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest

from idcmap.jobs.jobdir.layout import JobDir

from .cluster import ENV, LocalCluster
from .conftest import REPO
from .test_score_job import read_job_table


@pytest.fixture(scope="module")
def cluster():
    c = LocalCluster()
    try:
        c.start()
        c.add_node()
        c.add_node()
        yield c
    finally:
        c.stop()


def score(cluster, slides, job, **popen):
    cmd = [sys.executable, "-m", "idcmap", "score", str(slides), "--out", str(job), "--address", cluster.address]
    return subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def same_rows(job, reference_job):
    got, expected = read_job_table(job), read_job_table(reference_job)
    assert got.num_rows == expected.num_rows
    for name in ("patient_id", "slide_id", "x", "y", "col", "row", "tissue_fraction"):
        assert got[name].equals(expected[name]), name
    assert np.abs(got["prob_idc"].to_numpy() - expected["prob_idc"].to_numpy()).max() <= 1e-6


def test_ray_job_submit_runs_a_scoring_job(cluster, tmp_path, bundle):
    job = tmp_path / "job"
    cmd = ["ray", "job", "submit", "--address", cluster.dashboard, "--", sys.executable, "-m", "idcmap", "score",
           str(REPO / "examples" / "slides" / "patient-8916.tiff"), "--out", str(job)]  # fmt: skip
    deadline = time.time() + 120
    while True:  # the head's job agent answers a while after the cluster (or a node loss) settles
        proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
        if "No available agent to submit job" not in proc.stderr or time.time() > deadline:
            break
        time.sleep(5)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "succeeded" in proc.stdout
    assert [p.stem for p in JobDir(job).prediction_files()] == ["patient-8916"]


def test_scoring_on_the_cluster_gives_the_embedded_rows_and_records_the_nodes(
    cluster, tmp_path, rebuilt, reference_job
):
    job = tmp_path / "job"
    proc = score(cluster, rebuilt / "slides", job)
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    same_rows(job, reference_job)
    run = json.loads((job / "job.json").read_text())["runs"][-1]
    assert len(run["nodes"]) == 3 and all(n["cpus"] == 1 for n in run["nodes"].values())
    assert sum(n["patches"] for n in run["nodes"].values()) == read_job_table(job).num_rows
    assert sum(n["slides_planned"] for n in run["nodes"].values()) == 10
    assert sum(n["patches"] > 0 for n in run["nodes"].values()) >= 2  # the work was spread


def test_training_runs_its_ray_train_workers_on_the_cluster(cluster, tmp_path):
    """Two Ray Train workers of 1 CPU on nodes of 1 CPU: they run on two nodes; a valid bundle."""
    from idcmap.model import load_bundle

    from .conftest import shared_path

    data = [a for d in (shared_path("idc", "patients"), shared_path("idc", "sparse")) for a in ("--data", str(d))]
    cmd = [sys.executable, "-m", "idcmap", "train", *data, "--epochs", "1", "--folds", "0", "--num-workers", "2",
           "--batch-size", "32", "--limit-per-patient", "2", "--out", str(tmp_path / "bundle"),
           "--run-dir", str(tmp_path / "runs"), "--address", cluster.address]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    bundle = load_bundle(tmp_path / "bundle")
    assert [h["epoch"] for h in bundle.meta["training"]["history"]] == [1]
    assert "onnx" in bundle.backends


def test_a_worker_node_lost_mid_job_costs_no_slide_and_no_row(cluster, tmp_path, rebuilt, reference_job):
    cluster.add_node()  # a fourth node, to lose
    job = tmp_path / "job"
    proc = score(cluster, rebuilt / "slides", job)
    deadline = time.time() + 300
    while time.time() < deadline and len(JobDir(job).prediction_files()) < 2 and proc.poll() is None:
        time.sleep(0.1)
    cluster.kill_node(len(cluster.nodes) - 1)
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    assert "FAILED" not in stderr
    same_rows(job, reference_job)


def test_a_node_that_joins_mid_job_gets_scorers(tmp_path, rebuilt, reference_job):
    """A cluster of one 1-CPU node; a second node joins while the job runs: it scores too."""
    small = LocalCluster()
    try:
        small.start()
        job = tmp_path / "job"
        proc = score(small, rebuilt / "slides", job)
        deadline = time.time() + 300
        while time.time() < deadline and not (job / "job.json").exists() and proc.poll() is None:
            time.sleep(0.1)
        small.add_node()  # the job has started: its scorers are being made on the head
        _, stderr = proc.communicate(timeout=600)
    finally:
        small.stop()
    assert proc.returncode == 0, stderr[-3000:]
    same_rows(job, reference_job)
    nodes = json.loads((job / "job.json").read_text())["runs"][-1]["nodes"]
    assert len(nodes) == 2 and all(n["patches"] > 0 for n in nodes.values())
