"""Inference throughput per backend and batch size, with the share of this CPU's fp32 peak.

    python benchmarks/bench_inference.py models/idc-default [models/seed-cnn ...] [--threads 2]

Patches are real ones from ../shared/data/idc/sparse when present (random pixels otherwise).
The share of the limit is FLOPs/patch x patches/s over PEAK_GFLOPS (2 cores x AVX-512 FMA).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from model import load_bundle, make_backend

PEAK_GFLOPS = 300.0
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "idc" / "sparse"


def patches(n: int) -> np.ndarray:
    if DATA.is_dir():
        from model.data import load_patches

        imgs = load_patches([DATA]).images
        return np.resize(imgs, (n,) + imgs.shape[1:])
    return np.random.default_rng(0).integers(0, 256, (n, 50, 50, 3), dtype=np.uint8)


def bench(backend, x: np.ndarray, batch: int, min_seconds: float = 3.0) -> float:
    backend.batch_size = batch
    backend.predict(x[: batch * 2])  # warm-up (tracing, allocation)
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < min_seconds:
        backend.predict(x)
        done += len(x)
    return done / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bundles", nargs="+")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", default="1,16,64,256")
    ap.add_argument("--patches", type=int, default=1024)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    x = patches(args.patches)
    rows = []
    for path in args.bundles:
        bundle = load_bundle(path)
        flops = bundle.meta["architecture"]["flops_per_patch"]
        for name in bundle.backends:
            backend = make_backend(bundle, name, threads=args.threads)
            for batch in map(int, args.batches.split(",")):
                n = x if batch > 1 else x[:256]
                pps = bench(backend, n, batch)
                gflops = flops * pps / 1e9
                rows.append({"model": bundle.meta["name"], "arch": bundle.architecture, "backend": name,
                             "batch": batch, "threads": args.threads, "patches_per_s": round(pps, 1),
                             "gflop_per_s": round(gflops, 2), "share_of_peak": round(gflops / PEAK_GFLOPS, 4)})
                r = rows[-1]
                print(f"{r['model']:12s} {name:9s} batch {batch:4d}: {pps:8.0f} patches/s  "
                      f"{gflops:6.1f} GFLOP/s  {100 * r['share_of_peak']:5.1f} % of {PEAK_GFLOPS:.0f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
