"""Inference throughput per backend and batch size, with the share of this CPU's measured fp32 peak.

    python benchmarks/bench_inference.py models/idc-default [models/seed-cnn ...] [--quick]

Two set-ups of the same cores: one process whose backend runs one thread per core, and one process
per core with one thread each (the scoring job's set-up: a scorer actor per CPU), all predicting
at once.

Patches are real ones from ../shared/data/idc/sparse when present (random pixels otherwise; beside
their neighbourhoods for a network that sees them), uint8 in, calibrated probabilities out. The fp32
peak is measured here: a float32 matrix product (numpy's BLAS, all cores), the best of several.
Share = FLOPs/patch x patches/s / peak. int8 counts against its own limit, 4x the fp32 peak
(AVX-512 VNNI: four int8 multiply-adds per fp32 lane). Each figure is the median of ``--repeats``
runs of ``--seconds`` each, with the spread (min..max).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from idcmap.model import load_bundle, make_backend

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "idc" / "sparse"


def patches(bundle, n: int) -> np.ndarray:
    """n patches as ``bundle``'s network takes them (beside their neighbourhoods, for one that sees them)."""
    if DATA.is_dir():
        from idcmap.model.data import load_patches

        ps = load_patches([DATA], limit_per_patient=20)
        imgs, grid = ps.images, ps.grid
    else:
        imgs = np.random.default_rng(0).integers(0, 256, (n, 50, 50, 3), dtype=np.uint8)
        grid = (np.arange(n) // 32, np.arange(n) % 32, np.zeros(n))
    x = bundle.inputs(imgs, *grid)
    return np.resize(x, (n,) + x.shape[1:])


def measured_peak_gflops(n: int = 2048, tries: int = 5) -> float:
    """Best float32 GEMM rate of this machine (numpy BLAS, all cores), GFLOP/s."""
    a = np.random.default_rng(0).random((n, n), np.float32)
    b = a.T.copy()
    a @ b  # warm-up
    best = 0.0
    for _ in range(tries):
        t = time.perf_counter()
        a @ b
        best = max(best, 2 * n**3 / (time.perf_counter() - t) / 1e9)
    return best


def rate(backend, x: np.ndarray, batch: int, seconds: float) -> float:
    backend.batch_size = batch
    backend.predict(x[: batch * 2])  # warm-up (tracing, allocation)
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        backend.predict(x)
        done += len(x)
    return done / (time.perf_counter() - t0)


def _rate_worker(bundle_dir, name, patches_npy, share, threads, batches, repeats, seconds, start, out):
    x = np.load(patches_npy)[share]
    backend = make_backend(load_bundle(bundle_dir), name, threads=threads, shared_cores=True)
    for _ in range(repeats):
        for batch in batches:
            start.wait()
            out.put((batch, rate(backend, x, batch, seconds)))


def rates_in_processes(
    bundle_dir, name, patches_npy, processes: int, threads: int, batches, repeats: int, seconds: float
) -> dict[int, list[float]]:
    """Patches/s per batch size (``repeats`` runs each) of ``processes`` fresh processes, each with its
    own backend of ``threads`` threads predicting its share of the patches (an .npy file) over and
    over, all at once: the sum of their rates."""
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Barrier(processes + 1), ctx.Queue()
    procs = [
        ctx.Process(
            target=_rate_worker,
            args=(
                str(bundle_dir),
                name,
                str(patches_npy),
                slice(i, None, processes),
                threads,
                list(batches),
                repeats,
                seconds,
                start,
                out,
            ),
        )
        for i in range(processes)
    ]
    for p in procs:
        p.start()
    runs: dict[int, list[float]] = {b: [] for b in batches}
    for _ in range(repeats):
        for batch in batches:
            start.wait()
            results = [out.get() for _ in procs]
            assert all(b == batch for b, _ in results)
            runs[batch].append(sum(r for _, r in results))
    for p in procs:
        p.join()
    return runs


def spread(values) -> str:
    return f"{statistics.median(values):,.0f} ({min(values):,.0f}..{max(values):,.0f})"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bundles", nargs="+")
    ap.add_argument("--batches", default="1,8,16,64,256")
    ap.add_argument("--patches", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=1.5)
    ap.add_argument("--quick", action="store_true", help="batches 8 and 64, one short run each")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.quick:
        args.batches, args.repeats, args.seconds = "8,64", 1, 0.75
    batches = [int(b) for b in args.batches.split(",")]
    cores = len(os.sched_getaffinity(0))
    setups = {f"1 process x {cores} threads": (1, cores), f"{cores} processes x 1 thread": (cores, 1)}
    peak = measured_peak_gflops()
    print(f"measured fp32 peak: {peak:.0f} GFLOP/s on {cores} cores", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        npy = Path(tmp) / "patches.npy"
        for path in args.bundles:
            bundle = load_bundle(path)
            np.save(npy, patches(bundle, args.patches))
            flops = bundle.flops_per_patch
            for name in bundle.backends:
                limit = peak * (4 if name == "onnx-int8" else 1)
                for setup, (processes, threads) in setups.items():
                    row = {
                        "model": f"{bundle.name} ({bundle.architecture})",
                        "backend": name,
                        "setup": setup,
                        "limit_gflops": limit,
                        "runs": rates_in_processes(
                            path, name, npy, processes, threads, batches, args.repeats, args.seconds
                        ),
                    }
                    best = max(statistics.median(r) for r in row["runs"].values())
                    row["share"] = flops * best / 1e9 / limit
                    rows.append(row)
                    print(".", end="", flush=True)
    print(
        "\n| model | backend | set-up | " + " | ".join(f"batch {b}" for b in batches) + " | best share of its limit |"
    )
    print("|---|---|---|" + "---|" * len(batches) + "---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['backend']} | {r['setup']} | "
            + " | ".join(spread(r["runs"][b]) for b in batches)
            + f" | {100 * r['share']:.0f} % of {r['limit_gflops']:.0f} GFLOP/s |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"peak_gflops": peak, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
