"""The scoring job measured: end-to-end throughput against the reference approach and against the
backend alone, peak memory against slide size and slide count, and 1 vs 2 CPUs.

    python benchmarks/bench_scoring.py [--quick] [--repeats 3] [--work DIR] [--model BUNDLE]

Inputs, built once under --work: patients of ../shared/data/idc/patients rebuilt as 2.5x slides
(`build-slide`), and 40x-style slides (0.25 µm/px, JPEG-tiled pyramids 1/4/16) covered edge to edge
with real patches. Every `idcmap score` runs as a fresh process into a fresh JOB_DIR; its throughput
is tissue patches over the scoring time recorded in job.json (Ray start-up excluded; the wall time
of the command is printed too). Peak memory is the largest sum, over the command and every process
it starts (Ray's GCS, raylet, workers), of the proportional set size (PSS: shared pages, such as
Ray's object store, counted once), sampled every 0.2 s. Comparisons run side by side, repeated;
tables give the median and the spread (min..max).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import seed_loop
from bench_inference import rates_in_processes
from bench_tiling_memory import mosaic

from idcmap.model import load_bundle
from idcmap.slide_tiling import (
    build_slide,
    iter_patches,
    list_patches,
    open_slide,
    plan_slide,
    write_pyramid,
)

ROOT = Path(__file__).resolve().parents[1]

PATIENTS = ROOT.parent / "shared" / "data" / "idc" / "patients"
MODEL = ROOT / "models" / "idc-default"
SEED = ROOT / "models" / "seed-cnn"


def spread(values, fmt="{:,.0f}") -> str:
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}..{fmt.format(max(values))})"


# --- inputs ----------------------------------------------------------------------------------------
def rebuilt_patients(work: Path, n: int) -> Path:
    """The ``n`` smallest patients (by patch count, then id) as WORK/patients-N/P/P.tiff; kept if built."""
    if not PATIENTS.is_dir():
        raise SystemExit(f"{PATIENTS}: not found; the benchmarks need ../shared/data")
    root = work / f"patients-{n}"
    chosen = sorted(PATIENTS.iterdir(), key=lambda d: (len(list_patches(d)), d.name))[:n]
    for d in chosen:
        out = root / d.name / f"{d.name}.tiff"
        if not out.exists():
            out.parent.mkdir(parents=True, exist_ok=True)
            build_slide(d, out, work / f"{d.name}-mask.png")
    return root


def big_slide(work: Path, side_2_5x: int) -> Path:
    """A 40x-style slide of (16 x side)² level-0 px, alone in its folder."""
    path = work / f"big-{side_2_5x * 16}" / "big" / f"big-{side_2_5x * 16}.tiff"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_pyramid(path, mosaic(side_2_5x), mpp=0.25, upsample=16, downsamples=(1, 4, 16))
    return path.parent.parent


def many_slides(work: Path, source: Path, n: int) -> Path:
    """``n`` slides (links to the slides under ``source``, each its own patient)."""
    root = work / f"many-{n}"
    slides = sorted(source.glob("*/*.tiff"))
    for i in range(n):
        link = root / f"S{i:03d}" / f"S{i:03d}.tiff"
        if not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(slides[i % len(slides)])
    return root


# --- measurements ----------------------------------------------------------------------------------
def pss_bytes(pid: int) -> int:
    """Proportional set size of one process (from /proc/PID/smaps_rollup: cheap to read)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("Pss:"))
    except (OSError, StopIteration):
        return 0


def measure(cmd: list[str], env: dict | None = None, cwd: Path = ROOT) -> dict:
    """Run ``cmd``; its wall time, output (stdout and stderr) and the peak PSS of it and every
    process it starts, sampled every 0.25 s. Exits with the output's tail if ``cmd`` fails."""
    t0 = time.perf_counter()
    log = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    root, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            pids = [root.pid] + [p.pid for p in root.children(recursive=True)]
        except psutil.Error:
            pids = []
        peak = max(peak, sum(pss_bytes(pid) for pid in pids))
        time.sleep(0.25)
    wall = time.perf_counter() - t0
    log.seek(0)
    output = log.read()
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd[:4])} ... failed ({proc.returncode}):\n{output[-3000:]}")
    return {"wall_s": wall, "peak_mib": peak / 2**20, "output": output}


def score(inputs: Path, work: Path, cpus: int | None = None, model: Path = MODEL) -> dict:
    """Run ``idcmap score`` in a fresh process into a fresh JOB_DIR; patches, rates, peak PSS.

    ``cpus``: pin the command and everything it starts to that many cores (``taskset``) and give
    Ray as many CPUs."""
    job = Path(tempfile.mkdtemp(prefix="job-", dir=work))
    cmd = [sys.executable, "-m", "idcmap", "score", str(inputs), "--out", str(job), "--model", str(model)]
    if cpus:
        cmd = ["taskset", "-c", ",".join(map(str, range(cpus)))] + cmd + ["--num-cpus", str(cpus)]
    r = measure(cmd)
    run = json.loads((job / "job.json").read_text())["runs"][-1]
    return {
        "patches": run["patches"],
        "rate": run["patches"] / run["scoring_seconds"],
        "wall_rate": run["patches"] / r["wall_s"],
        "peak_mib": r["peak_mib"],
    }


def save_slide_patches(inputs: Path, npy: Path, model: Path) -> None:
    """Cut the tissue patches the job scores, as ``model``'s network takes them, once, into ``npy``."""
    cells = load_bundle(model).neighbourhood
    out = []
    for path in sorted(inputs.glob("*/*.tiff")):
        with open_slide(path) as reader:
            out += [b.pixels for b in iter_patches(reader, plan_slide(reader), cells)]
    np.save(npy, np.concatenate(out))


def backend_alone(npy: Path, model: Path, seconds: float = 2.0) -> float:
    """The job's backend without the job, on the job's patches (saved in ``npy``) in memory: the
    faster of the job's set-up (one process per core, one ONNX thread each, the job's batch size,
    all at once) and one process with one thread per core (batch 64)."""
    from idcmap.jobs.engine.run import ScoreSpec

    cores = len(os.sched_getaffinity(0))
    batch = ScoreSpec.batch_size
    return max(
        rates_in_processes(model, "onnx", npy, cores, 1, [batch], 1, seconds)[batch][0],
        rates_in_processes(model, "onnx", npy, 1, cores, [64], 1, seconds)[64][0],
    )


def reference(patient_dirs: list[Path]) -> tuple[int, float]:
    """The reference approach (``seed_loop.py`` with seed_cnn), timed after its model is loaded and
    warmed up: (patches, patches/s)."""
    model, mean, std = seed_loop.load(SEED)
    model.predict(np.zeros((64, 50, 50, 3), np.float32), verbose=0)  # warm-up
    t = time.perf_counter()
    n = seed_loop.predict(model, mean, std, patient_dirs)
    return n, n / (time.perf_counter() - t)


def table(header: list[str], rows: list[list]) -> None:
    print("\n| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(map(str, r)) + " |", flush=True)


def throughput(args, repeats, patients, bigs, sizes, n_patients, many):
    """1. end to end vs the reference vs the backend alone, side by side, repeated"""
    print(f"\n## 1. Throughput, tissue patches/s, median (min..max) of {repeats}")
    big = bigs[sizes[-1]]
    # (label, slides, model, slides whose patches the backend alone scores: a batch of links to the
    # patients' slides has the patients' patches)
    cases = [
        (f"{n_patients} rebuilt patients", patients, args.model, patients),
        (f"{n_patients} rebuilt patients", patients, SEED, patients),
        (f"1 slide {sizes[-1] * 16:,}² px, 40x-style", big, args.model, big),
        (f"{len(list(many.iterdir()))} slides (links to the {n_patients} patients)", many, args.model, patients),
    ]
    pngs = [PATIENTS / p.name for p in sorted(patients.iterdir())]
    ref = [reference(pngs)[1] for _ in range(repeats)]  # the same patches as the rebuilt patients'
    rows, npy = [], args.work / "alone.npy"
    for label, inputs, model, patches_of in cases:
        save_slide_patches(patches_of, npy, model)
        e2e, wall, alone = [], [], []
        for _ in range(repeats):
            job = score(inputs, args.work, model=model)
            n = job["patches"]
            e2e.append(job["rate"])
            wall.append(job["wall_rate"])
            alone.append(backend_alone(npy, model))
        med = statistics.median(e2e)
        rows.append(
            [
                label,
                model.name,
                n,
                spread(e2e),
                spread(wall),
                spread(alone),
                f"{100 * med / statistics.median(alone):.0f} %",
                f"{med / statistics.median(ref):.2f}x" if inputs is patients else "n/a",
            ]
        )
    npy.unlink()
    table(
        [
            "slides",
            "model",
            "tissue patches",
            "idcmap score",
            "idcmap score incl. Ray start",
            "backend alone (ONNX fp32, best set-up)",
            "e2e / alone",
            "e2e / reference",
        ],
        rows,
    )
    print(
        f"\nreference on the {n_patients} patients' {len([f for d in pngs for f in d.glob('*/*.png')]):,} patch "
        f"PNGs (glob, cv2.imread each, Keras seed_cnn model.predict): {spread(ref)} patches/s"
    )


def memory(args, bigs, sizes, counts, patients):
    """3. peak memory against slide size and slide count"""
    print("\n## 3. Peak memory of the scoring job (PSS of all its processes)")
    rows = []
    for s in sizes:
        job = score(bigs[s], args.work, model=args.model)
        rows.append([f"1 slide {s * 16:,}² px", job["patches"], f"{job['peak_mib']:,.0f}", f"{job['rate']:,.0f}"])
    for n in counts:
        job = score(many_slides(args.work, patients, n), args.work, model=args.model)
        rows.append([f"{n} slides (2.5x patients)", job["patches"], f"{job['peak_mib']:,.0f}", f"{job['rate']:,.0f}"])
    table(["input", "tissue patches", "peak MiB", "patches/s"], rows)


def scaling(args, repeats, inputs: Path):
    """4. scaling: the same job pinned to 1 and to 2 cores"""
    n = len(list(inputs.iterdir()))
    print(
        f"\n## 4. Scaling, {n} slides, patches/s median (min..max) of {repeats}; the command pinned "
        "to 1 or 2 cores (taskset) and Ray given as many CPUs"
    )
    rates = {1: [], 2: []}
    for _ in range(repeats):
        for cpus in (1, 2):
            rates[cpus].append(score(inputs, args.work, cpus=cpus, model=args.model)["rate"])
    table(
        ["cores", "patches/s", "speed-up"],
        [[c, spread(rates[c]), f"{statistics.median(rates[c]) / statistics.median(rates[1]):.2f}x"] for c in (1, 2)],
    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer and smaller slides, one run each (< 3 min)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "idcmap-bench-scoring")
    ap.add_argument("--sections", default="1,3,4", help="which tables: 1 throughput, 3 memory, 4 scaling")
    ap.add_argument("--model", type=Path, default=MODEL, help="the bundle measured (seed-cnn is always compared)")
    args = ap.parse_args()
    sections = set(args.sections.split(","))
    repeats = 1 if args.quick else args.repeats
    n_patients, sizes, counts = (4, [640, 1280], [10, 30]) if args.quick else (24, [640, 1920, 3840], [10, 100])
    args.work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    patients = rebuilt_patients(args.work, n_patients)
    bigs = {s: big_slide(args.work, s) for s in sizes}
    print(f"inputs ready in {time.perf_counter() - t_start:.0f} s under {args.work}", file=sys.stderr)

    many = many_slides(args.work, patients, counts[-1])  # an overnight-like batch
    if "1" in sections:
        throughput(args, repeats, patients, bigs, sizes, n_patients, many)
    if "3" in sections:
        memory(args, bigs, sizes, counts, patients)
    if "4" in sections:
        scaling(args, repeats, many)
    print(f"\n(total {time.perf_counter() - t_start:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
