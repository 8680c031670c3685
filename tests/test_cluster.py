"""On a real local Ray cluster (`ray start`: a head and worker nodes of 1 CPU each, one of them with
a GPU that is not there): scoring gives the embedded run's rows, with GPU scorers only where the GPU
is; a worker node lost mid-job costs no slide and no row; `ray job submit` runs a job; training runs
its workers across nodes and survives losing one; the job lock holds between nodes; the test cluster
stops only its own processes."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time

import numpy as np
import psutil
import pyarrow.compute as pc
import pytest

from idcmap.jobs.jobdir.layout import JobDir

from .cluster import ENV, LocalCluster
from .conftest import REPO
from .test_score_job import ROW_ORDER, read_job_table


@pytest.fixture(scope="module")
def cluster():
    c = LocalCluster()
    try:
        c.start()
        c.add_node()
        c.add_node("--num-gpus", "1")  # a resource Ray schedules by; nothing here has CUDA
        yield c
    finally:
        c.stop()


def score(cluster, slides, job, *args):
    cmd = [sys.executable, "-m", "idcmap", "score", str(slides), "--out", str(job), "--address", cluster.address, *args]
    return subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def same_rows(job, reference_job):
    same_table(read_job_table(job), read_job_table(reference_job))


def same_table(got, expected):
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
    """One CPU scorer per node and, with --gpus-per-actor 1, a GPU scorer on the node with the GPU
    (inferring on the CPU there: no CUDA), the rows of the embedded run."""
    job = tmp_path / "job"
    proc = score(cluster, rebuilt / "slides", job, "--gpus-per-actor", "1")
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    same_rows(job, reference_job)
    run = json.loads((job / "job.json").read_text())["runs"][-1]
    assert len(run["nodes"]) == 3 and all(n["cpus"] == 1 for n in run["nodes"].values())
    (gpu_node,) = [name for name, n in run["nodes"].items() if "gpus" in n]
    assert [(n.get("gpu_scorers"), n.get("gpu_device")) for n in run["nodes"].values()].count((None, None)) == 2
    assert (run["nodes"][gpu_node]["gpu_scorers"], run["nodes"][gpu_node]["gpu_device"]) == (1, "CPU")
    assert f"node {gpu_node}: its GPU scorers infer on the CPU" in stderr
    assert sum(n["patches"] for n in run["nodes"].values()) == read_job_table(job).num_rows
    assert sum(n["slides_planned"] for n in run["nodes"].values()) == 10
    assert sum(n["patches"] > 0 for n in run["nodes"].values()) >= 2  # the work was spread


def train_worker_node(cluster) -> int | None:
    """A worker node (not the head) running a Ray Train worker, or None."""
    for node in range(1, len(cluster.nodes)):
        try:
            children = cluster.raylet(node).children(recursive=True)
        except (AssertionError, psutil.Error):
            continue
        for p in children:
            try:
                if "RayTrainWorker" in " ".join(p.cmdline()):
                    return node
            except psutil.Error:
                pass
    return None


def test_training_runs_across_nodes_and_survives_losing_one(cluster, tmp_path):
    """Two Ray Train workers of 1 CPU on nodes of 1 CPU run on two nodes; the node of one of them
    is lost after the first checkpoint: the workers restart from it on the nodes left, and the
    run gives a valid bundle with every epoch once and the restart on record. Three epochs, so the
    kill lands before the last checkpoint however long the test takes to see the first."""
    from idcmap.model import load_bundle

    from .conftest import shared_path

    cluster.add_node()  # room for both workers once a node is lost
    data = [a for d in (shared_path("idc", "patients"), shared_path("idc", "sparse")) for a in ("--data", str(d))]
    runs = tmp_path / "runs"
    cmd = [sys.executable, "-m", "idcmap", "train", *data, "--epochs", "3", "--folds", "0", "--num-workers", "2",
           "--batch-size", "32", "--limit-per-patient", "8", "--out", str(tmp_path / "bundle"),
           "--run-dir", str(runs), "--address", cluster.address]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    # Ray Train writes its checkpoint manager's snapshot once it has registered a checkpoint (a
    # checkpoint's own files appear before that: a kill then restarts the workers from scratch)
    while time.time() < deadline and proc.poll() is None and not any(runs.rglob("checkpoint_manager_snapshot.json")):
        time.sleep(0.2)
    node = train_worker_node(cluster)
    assert node is not None and proc.poll() is None, "no worker node ran a training worker mid-run"
    cluster.kill_node(node)
    stdout, stderr = proc.communicate(timeout=900)
    assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
    assert "the workers restart from the last checkpoint" in stderr
    training = load_bundle(tmp_path / "bundle").meta["training"]
    assert [h["epoch"] for h in training["history"]] == [1, 2, 3]
    restarts = training["restarted_after_epochs"]  # killed during epoch 2 or 3
    assert len(restarts) == 1 and restarts[0] in (1, 2), restarts


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
    """A cluster of one 1-CPU node; a second node joins while the job runs: it scores too. The job
    scores the ten slides under four patients each, so that it outlasts a node's start (ten slides
    alone took about 10 s on one node, less than a node takes to join and load a scorer)."""
    copies = 4
    slides = sorted((rebuilt / "slides").glob("*/*.tiff"))
    manifest = tmp_path / "manifest.csv"
    rows = [f"{s.stem}-{k},{s}" for k in range(copies) for s in slides]
    manifest.write_text("\n".join(["patient_id,slide_path", *rows]) + "\n")
    small = LocalCluster()
    try:
        small.start()
        job = tmp_path / "job"
        proc = score(small, manifest, job)
        deadline = time.time() + 300
        while time.time() < deadline and not (job / "job.json").exists() and proc.poll() is None:
            time.sleep(0.1)
        small.add_node()  # the job has started: its scorers are being made on the head
        _, stderr = proc.communicate(timeout=600)
    finally:
        small.stop()
    assert proc.returncode == 0, stderr[-3000:]
    got, expected = read_job_table(job), read_job_table(reference_job)
    i = got.schema.get_field_index("patient_id")
    for k in range(copies):  # each copy: the reference's rows under its patient ids
        copy = got.filter(pc.ends_with(got["patient_id"], f"-{k}"))
        copy = copy.set_column(i, "patient_id", pc.utf8_slice_codeunits(copy["patient_id"], 0, -2))
        same_table(copy.sort_by(ROW_ORDER), expected)
    nodes = json.loads((job / "job.json").read_text())["runs"][-1]["nodes"]
    assert len(nodes) == 2 and all(n["patches"] > 0 for n in nodes.values()), nodes


def test_the_test_cluster_stops_only_its_own_processes():
    """A process of another Ray on this machine (a job's embedded Ray, say) that starts while a node
    starts is not taken for the node's: the cluster's stop leaves it running and stops its own."""
    other: list[subprocess.Popen] = []
    fake = [sys.executable, "-c", "import time; time.sleep(300)", "/tmp/other-ray/site-packages/ray/raylet"]
    starter = threading.Timer(0.5, lambda: other.append(subprocess.Popen(fake)))
    c = LocalCluster()
    procs: list[psutil.Process] = []
    try:
        try:
            starter.start()
            c.start()  # `ray start` takes seconds: the other process starts meanwhile
            starter.join()
            own = set(c.nodes[0])
            assert c.raylet(0).pid in own and other[0].pid not in own
            for pid in own:
                with contextlib.suppress(psutil.NoSuchProcess):  # a short-lived helper may be gone
                    procs.append(psutil.Process(pid))
        finally:
            starter.join()
            c.stop()
        assert other[0].poll() is None, "the cluster's stop killed another Ray's process"
        _, running = psutil.wait_procs(procs, timeout=10)  # SIGKILL takes effect a moment later
        assert not running, running
    finally:
        for p in other:
            p.kill()


LOCK_FROM_TWO_NODES = """
import json, sys, time
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from idcmap.cluster import ray_session

def on(node):
    return NodeAffinitySchedulingStrategy(node, soft=False)

@ray.remote(num_cpus=0)
def hold(job, seconds):
    from idcmap.jobs.jobdir.layout import JobDir
    from idcmap.jobs.jobdir.lock import job_lock
    with job_lock(JobDir(job)):
        time.sleep(seconds)
    return ray.get_runtime_context().get_node_id()

@ray.remote(num_cpus=0)
def take(job):
    from idcmap.jobs.jobdir.layout import JobDir
    from idcmap.jobs.jobdir.lock import JobLocked, job_lock
    try:
        with job_lock(JobDir(job)):
            return "taken"
    except JobLocked as exc:
        return str(exc)

with ray_session(sys.argv[1]):
    a, b = [n["NodeID"] for n in ray.nodes() if n["Alive"]][:2]
    held = hold.options(scheduling_strategy=on(a)).remote(sys.argv[2], 8)
    while not open(sys.argv[2] + "/.lock").read():
        time.sleep(0.1)
    refused = ray.get(take.options(scheduling_strategy=on(b)).remote(sys.argv[2]))
    holder = ray.get(held)
    print(json.dumps([refused, ray.get(take.options(scheduling_strategy=on(b)).remote(sys.argv[2])), holder == a]))
"""


def test_the_job_lock_holds_between_nodes(cluster, tmp_path):
    """A job folder locked by a process on one node cannot be locked from another node until it is
    released (one machine here: the two nodes share a kernel, as machines share an NFS server)."""
    job = tmp_path / "job"
    job.mkdir()
    (job / ".lock").write_text("")
    proc = subprocess.run([sys.executable, "-c", LOCK_FROM_TWO_NODES, cluster.address, str(job)],
                          env=ENV, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    refused, taken, held_on_first = json.loads(proc.stdout.strip().splitlines()[-1])
    assert refused.startswith(f"{job}: another idcmap score (pid ") and "is writing this job" in refused
    assert taken == "taken" and held_on_first
