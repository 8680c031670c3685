"""The scoring job's defaults against their neighbours, one setting changed at a time.

    python benchmarks/bench_defaults.py [--repeats 3] [--work DIR]

Runs the job's own ``run_scoring`` in this process on a warm local Ray (2 CPUs) over the 24 rebuilt
patients of ``bench_scoring.py``, every variant once per round, rounds repeated (the first round is
a warm-up and not counted): medians and spreads of tissue patches/s, side by side.
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import ray
from bench_scoring import MODEL, rebuilt_patients, spread

import idcmap.jobs.engine.run as pipeline
from idcmap.jobs.engine.scheduler import Scheduler
from idcmap.jobs.inputs import collect_tasks
from idcmap.jobs.jobdir.layout import JobDir
from idcmap.jobs.progress import Progress
from idcmap.slide_tiling import TilingSpec

ROOT = Path(__file__).resolve().parents[1]

DEFAULTS = {
    "actors": None,
    "batch_size": pipeline.ScoreSpec.batch_size,
    "region_size": TilingSpec.region_size,
    "chunk_patches": Scheduler.chunk_patches,
    "calls_per_actor": Scheduler.calls_per_actor,
}
VARIANTS = [
    {},
    {"actors": 3},
    {"batch_size": 1},
    {"batch_size": 64},
    {"region_size": 1024},
    {"chunk_patches": 512},
    {"chunk_patches": 2048},
    {"calls_per_actor": 2},
]


def run(job_dir: Path, tasks, settings: dict) -> float:
    s = {**DEFAULTS, **settings}
    Scheduler.chunk_patches, Scheduler.calls_per_actor = s["chunk_patches"], s["calls_per_actor"]
    pipeline.TilingSpec = lambda **kw: replace(TilingSpec(**kw), region_size=s["region_size"])
    spec = pipeline.ScoreSpec(job_id="bench", bundle=str(MODEL), actors=s["actors"], batch_size=s["batch_size"])
    t = time.perf_counter()
    results = pipeline.run_scoring(JobDir(job_dir), tasks, spec, 2, Progress(len(tasks), stream=io.StringIO()))
    return sum(r.patches for r in results) / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "idcmap-bench-scoring")
    args = ap.parse_args()
    tasks = collect_tasks([rebuilt_patients(args.work, 24)])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    rates = [[] for _ in VARIANTS]
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        for round_ in range(args.repeats + 1):
            for i, settings in enumerate(VARIANTS):
                rate = run(Path(tmp) / f"{round_}-{i}", tasks, settings)
                if round_:
                    rates[i].append(rate)
    base = statistics.median(rates[0])
    print("\n| setting | patches/s | vs the defaults |\n|---|---|---|")
    for settings, r in zip(VARIANTS, rates):
        label = (
            ", ".join(f"{k} {v}" for k, v in settings.items())
            or "the defaults ("
            + ", ".join(f"{k} {'one per CPU' if v is None else v}" for k, v in DEFAULTS.items())
            + ")"
        )
        print(f"| {label} | {spread(r)} | {statistics.median(r) / base - 1:+.0%} |")


if __name__ == "__main__":
    main()
