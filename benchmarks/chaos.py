"""Chaos run of the scoring job: random Ray workers SIGKILLed while `idcmap score` runs.

    python benchmarks/chaos.py [--runs 3] [--slides 20] [--interval 0.5 1.5] [--seed 0] [--work DIR]

Rebuilds the smallest patients of ../shared/data/idc/patients as 2.5x slides (once per work folder),
scores them once uninterrupted (the reference), then runs the same job --runs times into fresh
folders. During each run, every 0.5-1.5 s (random, seeded) one scorer actor of that job is SIGKILLed:
one planning a slide (ray::Scorer.plan), one cutting and scoring a chunk (ray::Scorer.score) or an
idle one (ray::Scorer), the kind chosen at random among those alive. Only descendants of the job's own
process are touched (never `ray stop`). A run that exits non-zero is re-run once, as the README
says to (re-running resumes). Each run must end with every slide scored exactly once and exactly
the reference's rows. Prints a markdown table; exit code 1 if any run fails a check.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
from bench_scoring import rebuilt_patients

ROOT = Path(__file__).resolve().parents[1]

KINDS = {"ray::Scorer.plan": "plan", "ray::Scorer.score": "score", "ray::Scorer": "idle"}  # first match
KEY = ["patient_id", "slide_id", "row", "col"]
RUN_TIMEOUT = 900  # seconds a single job may take before it counts as hung


def job_workers(root: psutil.Process) -> list[tuple[str, psutil.Process]]:
    """(kind, process) of the live Ray workers under ``root`` that we may kill."""
    found = []
    for p in root.children(recursive=True):
        try:
            cmd = " ".join(p.cmdline())
        except psutil.Error:
            continue
        for title, kind in KINDS.items():
            if cmd.startswith(title):
                found.append((kind, p))
                break
    return found


def score(slides: Path, job: Path, log: Path, rng: random.Random | None, interval) -> tuple[int, Counter]:
    """Run `python -m idcmap score`; with ``rng``, SIGKILL a random worker every few seconds."""
    kills: Counter = Counter()
    cmd = [sys.executable, "-m", "idcmap", "score", str(slides), "--out", str(job)]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # always an embedded Ray
    with open(log, "a") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        root, deadline = psutil.Process(proc.pid), time.time() + RUN_TIMEOUT
        try:
            while proc.poll() is None and time.time() < deadline:
                if rng is None:
                    time.sleep(0.5)
                    continue
                next_kill = time.time() + rng.uniform(*interval)
                while proc.poll() is None and time.time() < next_kill:
                    time.sleep(0.05)
                while proc.poll() is None:  # wait for a worker to be alive, then kill one
                    workers = job_workers(root)
                    if workers:
                        kind = rng.choice(sorted({k for k, _ in workers}))
                        victim = rng.choice([p for k, p in workers if k == kind])
                        try:
                            victim.send_signal(signal.SIGKILL)
                            kills[kind] += 1
                            out.write(f"chaos: SIGKILL {kind} pid {victim.pid} at {time.strftime('%T')}\n")
                            out.flush()
                        except psutil.Error:
                            pass
                        break
                    time.sleep(0.05)
        finally:
            if proc.poll() is None:  # hung: end the job's own process group only
                os.killpg(proc.pid, signal.SIGKILL)
                out.write("chaos: job hung, killed\n")
            proc.wait()
    return proc.returncode, kills


def check(job: Path, patients: list[str], reference: pd.DataFrame | None) -> dict:
    files = sorted(
        p.relative_to(job / "predictions").as_posix() for p in (job / "predictions").glob("*/*") if p.is_file()
    )
    expected = [f"{p}/{p}.parquet" for p in patients]
    got = pd.read_parquet(job / "predictions").sort_values(KEY, ignore_index=True)
    res = {
        "slides": sum(f in expected for f in files),
        "rows": len(got),
        "dups": int(got.duplicated(KEY).sum()),
        "failed": len(list((job / "failed").glob("*/*.json"))),
        "tmp": len(list(job.rglob("*.tmp"))),
        "files_ok": files == expected,
        "table": got,
    }
    if reference is not None:
        res["equal"] = (
            len(got) == len(reference)
            and all(
                (got[c].to_numpy() == reference[c].to_numpy()).all()
                for c in ("patient_id", "slide_id", "x", "y", "row", "col")
            )
            and all(
                np.abs(got[c].to_numpy() - reference[c].to_numpy()).max() <= 1e-6 for c in ("prob_idc", "prob_patch")
            )
        )
    res["ok"] = res["files_ok"] and res["dups"] == 0 and not res["failed"] and not res["tmp"] and res.get("equal", True)
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--slides", type=int, default=20)
    ap.add_argument("--interval", type=float, nargs=2, default=(0.5, 1.5), metavar=("MIN", "MAX"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()
    work = (args.work or Path(tempfile.mkdtemp(prefix="idcmap-chaos-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    print(f"work folder {work}", file=sys.stderr)
    slides = rebuilt_patients(work, args.slides)
    patients = sorted(p.name for p in slides.iterdir())

    rows, all_ok, reference = [], True, None
    for run in range(args.runs + 1):
        name = "reference" if run == 0 else f"chaos-{run}"
        job, log = work / name, work / f"{name}.log"
        shutil.rmtree(job, ignore_errors=True)
        log.unlink(missing_ok=True)
        rng = None if run == 0 else random.Random(args.seed + run)
        t0 = time.time()
        rc, kills = score(slides, job, log, rng, args.interval)
        reruns = 0
        if rc != 0 and run > 0:  # the documented recovery: the same command again
            reruns = 1
            rc, _ = score(slides, job, log, None, args.interval)
        seconds = time.time() - t0
        res = check(job, patients, reference)
        ok = rc == 0 and res["ok"]
        all_ok &= ok
        if run == 0:
            reference = res["table"]
        kill_text = ", ".join(f"{kills[k]} {k}" for k in ("plan", "score", "idle") if kills[k]) or "0"
        rows.append(
            f"| {name} | {seconds:.0f} | {sum(kills.values())}{f' ({kill_text})' if kills else ''} | {reruns} | "
            f"{res['slides']}/{len(patients)} | {res['rows']:,} | "
            f"{ {True: 'yes', False: 'NO', None: '-'}[res.get('equal')] } | {res['dups']} | "
            f"{'ok' if ok else 'FAILED'} |"
        )
        print(rows[-1], file=sys.stderr)
        if not ok:
            print(
                f"{name}: exit {rc}, failed records {res['failed']}, tmp files {res['tmp']}, "
                f"files as expected {res['files_ok']}; log {log}",
                file=sys.stderr,
            )
        if run == 0 and not ok:
            break
    print(
        "| run | seconds | kills (by kind) | re-runs needed | slides scored | rows | "
        "rows equal to reference | duplicates | checks |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    sys.exit(0 if all_ok else 1)


if __name__ == "__main__":
    main()
