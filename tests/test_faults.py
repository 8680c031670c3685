"""Worker faults mid-job: scorer actors are SIGKILLed twice; the job still finishes with exactly the
rows of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import psutil

from idcmap.jobs.jobdir.layout import JobDir
from idcmap.jobs.jobdir.schema import read_failures

from .conftest import REPO
from .test_score_job import read_job_table


def ray_processes(title: str, root: psutil.Process) -> list[psutil.Process]:
    """Ray workers of the job started by ``root`` whose process title starts with ``title``."""
    found = []
    for p in root.children(recursive=True):
        try:
            if " ".join(p.cmdline()).startswith(title):
                found.append(p)
        except psutil.Error:
            pass
    return found


def kill_first(title: str, root: psutil.Process, deadline: float, spare: int | None = None) -> int:
    """SIGKILL the first such process (other than pid ``spare``); its pid."""
    while time.time() < deadline:
        procs = [p for p in ray_processes(title, root) if p.pid != spare]
        if procs:
            procs[0].send_signal(signal.SIGKILL)
            return procs[0].pid
        time.sleep(0.01)
    raise AssertionError(f"no {title} process appeared")


def start_score(slides, job, cpus: int) -> subprocess.Popen:
    """`idcmap score` in its own session (so that its whole process group can be killed)."""
    cmd = [sys.executable, "-m", "idcmap", "score", str(slides), "--out", str(job), "--num-cpus", str(cpus)]
    return subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
    )


def test_killed_actors_do_not_lose_or_duplicate_rows(tmp_path, rebuilt, reference_job):
    expected = read_job_table(reference_job)

    job = tmp_path / "faulty"
    proc = start_score(rebuilt / "slides", job, cpus=2)
    try:
        root = psutil.Process(proc.pid)
        deadline = time.time() + 240
        first = kill_first("ray::Scorer", root, deadline)
        time.sleep(0.5)  # the other actor, or the first one restarted, mid-chunk
        kill_first("ray::Scorer", root, deadline, spare=first)
        _, stderr = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, stderr[-2000:]
    assert len(JobDir(job).prediction_files()) == len(JobDir(reference_job).prediction_files()) == 10
    got = read_job_table(job)
    assert got.num_rows == expected.num_rows
    for name in ("patient_id", "slide_id", "x", "y", "col", "row", "tissue_fraction"):
        assert got[name].equals(expected[name]), name
    assert np.abs(got["prob_idc"].to_numpy() - expected["prob_idc"].to_numpy()).max() <= 1e-6


def test_a_slide_whose_actor_dies_four_times_fails_alone(tmp_path):
    """One actor (1 CPU), two slides: the actor is SIGKILLed four times while it scores the first
    slide's first chunk (its only call out). The call is retried three times, then the slide fails
    with a one-line reason; the second slide is scored by the restarted actor; exit code 1."""
    slides = REPO / "examples" / "slides"
    job = tmp_path / "job"
    proc = start_score(slides, job, cpus=1)
    try:
        root, deadline, killed = psutil.Process(proc.pid), time.time() + 240, None
        for _ in range(4):
            killed = kill_first("ray::Scorer.score", root, deadline, spare=killed)
        _, stderr = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 1, stderr[-2000:]
    failures = read_failures(JobDir(job))
    assert [(f["patient_id"], f["slide_id"]) for f in failures] == [("patient-8863", "patient-8863")]
    assert (
        failures[0]["error"].startswith(str(slides / "patient-8863.tiff") + ": ") and "\n" not in failures[0]["error"]
    )
    assert [p.stem for p in JobDir(job).prediction_files()] == ["patient-8916"]
    assert "FAILED patient-8863/patient-8863: " in stderr
