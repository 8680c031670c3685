"""The scoring job on a real Ray cluster of 1, 2 and 3 nodes, and what a hospital night needs.

    python benchmarks/bench_cluster.py [--quick] [--repeats 3] [--work DIR] [--json OUT]

A local cluster started with `ray start` on this machine (a head, then worker nodes, 1 CPU each,
127.0.0.1; tests/cluster.py), grown one node at a time; on each size the overnight-like batch of
bench_scoring.py (100 slides: links to the 24 rebuilt patients; --quick: 30 links to 4) is scored
with `idcmap score --address` into a fresh JOB_DIR, `--repeats` times. Patches/s: tissue patches
over the scoring seconds of job.json (the driver's Ray start-up excluded), and over the whole
command's wall time. Then one 40x-style slide (61,440² px; --quick: 20,480²) on the 1-node cluster
gives the patches/s of one CPU on 40x slides, from which the sizing table is computed: the nodes
needed to score a night's slides in 8 hours.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_scoring import ROOT, big_slide, many_slides, rebuilt_patients, spread, table

sys.path.insert(0, str(ROOT))
from tests.cluster import ENV, LocalCluster  # noqa: E402  (the test suite's cluster, started the same way)

NIGHT_S = 8 * 3600
#: a 40x breast slide: 25 x 19 mm scanned at 0.25 µm/px is 100,000 x 76,000 px; its 200 µm patches
#: (50 px at 4.0 µm/px) make a 125 x 95 grid, of which tissue covers about 40 %
TISSUE_PATCHES_PER_40X_SLIDE = round(125 * 95 * 0.4)


def score(cluster: LocalCluster, inputs: Path, work: Path) -> dict:
    job = Path(tempfile.mkdtemp(prefix="job-", dir=work))
    cmd = [sys.executable, "-m", "idcmap", "score", str(inputs), "--out", str(job), "--address", cluster.address]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"idcmap score {inputs} failed:\n{proc.stderr[-2000:]}")
    run = json.loads((job / "job.json").read_text())["runs"][-1]
    return {
        "patches": run["patches"],
        "rate": run["patches"] / run["scoring_seconds"],
        "wall_rate": run["patches"] / wall,
        "nodes_used": sum(n["patches"] > 0 for n in run["nodes"].values()),
    }


def sizing(per_cpu: float, efficiency: float, cores_per_node: int) -> list[list]:
    """Rows of the sizing table: slides per night -> tissue patches, CPU-hours at ``per_cpu``
    patches/s, hours on one node of ``cores_per_node`` CPUs each scaling with ``efficiency``
    (speed-up per CPU), and the nodes that score them in the 8-hour night."""
    rows = []
    node_rate = per_cpu * cores_per_node * efficiency
    for slides in (100, 1_000, 10_000, 50_000):
        patches = slides * TISSUE_PATCHES_PER_40X_SLIDE
        rows.append(
            [
                f"{slides:,}",
                f"{patches:,}",
                f"{patches / per_cpu / 3600:,.1f}",
                f"{patches / node_rate / 3600:,.2f}",
                math.ceil(patches / (node_rate * NIGHT_S)),
            ]
        )
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="30 slides, a 20,480² slide, one run each")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "idcmap-bench-scoring")
    ap.add_argument("--cores-per-node", type=int, default=16, help="machine size of the sizing table")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    repeats = 1 if args.quick else args.repeats
    args.work.mkdir(parents=True, exist_ok=True)
    patients = rebuilt_patients(args.work, 4 if args.quick else 24)
    batch = many_slides(args.work, patients, 30 if args.quick else 100)
    big = big_slide(args.work, 1280 if args.quick else 3840)
    n_slides = len(list(batch.iterdir()))

    cluster = LocalCluster()
    results: dict = {}
    try:
        cluster.start()
        for nodes in (1, 2, 3):
            if nodes > 1:
                cluster.add_node()
            runs = [score(cluster, batch, args.work) for _ in range(repeats)]
            results[nodes] = runs
            print(f"{nodes} nodes: {[round(r['rate']) for r in runs]} patches/s", file=sys.stderr, flush=True)
        cluster.stop()
        cluster = LocalCluster().start()  # one node again, for one CPU on a 40x slide
        one_cpu_40x = [score(cluster, big, args.work) for _ in range(repeats)]
    finally:
        cluster.stop()

    base = statistics.median(r["rate"] for r in results[1])
    print(f"\n## Cluster scaling: {n_slides} slides, {results[1][0]['patches']:,} tissue patches, "
          f"nodes of 1 CPU, median (min..max) of {repeats}")  # fmt: skip
    table(
        ["nodes", "patches/s (scoring)", "patches/s (whole command)", "speed-up", "nodes that scored"],
        [
            [
                n,
                spread([r["rate"] for r in runs]),
                spread([r["wall_rate"] for r in runs]),
                f"{statistics.median(r['rate'] for r in runs) / base:.2f}x",
                min(r["nodes_used"] for r in runs),
            ]
            for n, runs in results.items()
        ],
    )
    per_cpu = statistics.median(r["rate"] for r in one_cpu_40x)
    efficiency = min(1.0, statistics.median(r["rate"] for r in results[2]) / base / 2)  # 2 nodes: 2 cores here
    print(f"\none CPU on a 40x-style slide ({one_cpu_40x[0]['patches']:,} tissue patches): "
          f"{spread([r['rate'] for r in one_cpu_40x])} patches/s (scoring)")  # fmt: skip
    print(f"\n## Sizing: an 8-hour night, {TISSUE_PATCHES_PER_40X_SLIDE:,} tissue patches per 40x slide, "
          f"{per_cpu:,.0f} patches/s per CPU, nodes of {args.cores_per_node} CPUs at the 2-node "
          f"efficiency {efficiency:.0%}")  # fmt: skip
    one_node = f"hours on one {args.cores_per_node}-CPU node"
    header = ["slides per night", "tissue patches", "CPU-hours", one_node, "nodes for 8 h"]
    table(header, sizing(per_cpu, efficiency, args.cores_per_node))
    if args.json:
        args.json.write_text(
            json.dumps({"scaling": {str(n): r for n, r in results.items()}, "one_cpu_40x": one_cpu_40x}, indent=1)
        )


if __name__ == "__main__":
    main()
