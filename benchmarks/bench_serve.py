"""Tile latency of `idcmap serve` on a 40x slide: cold (first request of a tile) and warm (cached),
with the machine quiet and while `idcmap score` runs beside it.

    python benchmarks/bench_serve.py [--quick] [--work DIR]

The 40x-style slide of bench_scoring.py (61,440² px at 0.25 µm/px, JPEG-tiled pyramid 1/4/16;
--quick: 20,480²) is scored once into a job, which `idcmap serve` (a separate process) serves on
127.0.0.1. For each deep-zoom level from the whole slide in 256 px to full resolution, up to 40
tiles at random are requested one after the other over HTTP (a new connection each, as a browser
opening a viewer), each twice: the first is cold, the second warm. Latency is the client's time
from sending the request to the last byte. The same is then repeated on other tiles while
`idcmap score` scores the 100-slide batch of bench_scoring.py on the same 2 cores.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_scoring import ROOT, big_slide, many_slides, rebuilt_patients, table

SLIDE_API = "/api/jobs/{job}/slides/big/{slide}"


def get(port: int, path: str) -> float:
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("GET", path)
    response = conn.getresponse()
    response.read()
    conn.close()
    if response.status != 200:
        raise SystemExit(f"GET {path}: {response.status}")
    return (time.perf_counter() - t0) * 1000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiles(info: dict, per_level: int, rng: random.Random) -> list[tuple[int, int, int]]:
    """Up to ``per_level`` random tiles of each level from 1 tile to full resolution."""
    chosen = []
    top = info["max_level"]
    for level in range(top, -1, -1):
        d = 2 ** (top - level)
        cols, rows = -(-info["width"] // (256 * d)), -(-info["height"] // (256 * d))
        cells = [(c, r) for c in range(cols) for r in range(rows)]
        chosen += [(level, c, r) for c, r in rng.sample(cells, min(per_level, len(cells)))]
        if cols == rows == 1:
            break
    return chosen


def measure(port: int, api: str, chosen) -> tuple[list[float], list[float]]:
    cold, warm = [], []
    for level, c, r in chosen:
        path = f"{api}/tiles/{level}/{c}_{r}.jpg"
        cold.append(get(port, path))
        warm.append(get(port, path))
    return cold, warm


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def serve_and_measure(job: Path, slide: str, per_level: int, seed: int) -> tuple[list[float], list[float]]:
    """Start `idcmap serve` (an empty cache), request the tiles (each cold, then warm), stop it."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "idcmap", "-q", "serve", str(job), "--port", str(port)], cwd=ROOT)
    api = SLIDE_API.format(job=job.name, slide=slide)
    try:
        deadline = time.time() + 60
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", f"{api}/info")
                info = json.loads(conn.getresponse().read())
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.2)
        return measure(port, api, tiles(info, per_level, random.Random(seed)))
    finally:
        server.terminate()
        server.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="a 20,480² slide, 10 tiles a level")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "idcmap-bench-scoring")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    side = 1280 if args.quick else 3840
    inputs = big_slide(args.work, side)
    slide = next(inputs.glob("*/*.tiff")).stem
    job = Path(tempfile.mkdtemp(prefix="serve-", dir=args.work)) / "job"
    subprocess.run(
        [sys.executable, "-m", "idcmap", "-q", "score", str(inputs), "--out", str(job)], check=True, cwd=ROOT
    )
    per_level = 10 if args.quick else 40
    quiet = serve_and_measure(job, slide, per_level, seed=0)
    batch = many_slides(args.work, rebuilt_patients(args.work, 4 if args.quick else 24), 30 if args.quick else 100)
    busy_job = Path(tempfile.mkdtemp(prefix="busy-", dir=args.work)) / "job"
    scoring = subprocess.Popen([sys.executable, "-m", "idcmap", "-q", "score", str(batch), "--out", str(busy_job)],
                               cwd=ROOT, stderr=subprocess.DEVNULL)  # fmt: skip
    time.sleep(15)  # Ray started, the scorers busy
    busy = serve_and_measure(job, slide, per_level, seed=1)
    still_scoring = scoring.poll() is None
    scoring.wait()
    print(f"\n## Tile latency, ms, {side * 16:,}² px 40x-style slide, 256 px JPEG tiles over HTTP")
    rows = []
    for label, (cold, warm) in (("quiet", quiet), ("while idcmap score runs", busy)):
        for kind, values in (("cold", cold), ("warm", warm)):
            rows.append([label, kind, len(values), f"{pct(values, 50):.1f}", f"{pct(values, 95):.1f}",
                         f"{max(values):.1f}"])  # fmt: skip
    table(["machine", "cache", "tiles", "p50", "p95", "max"], rows)
    if not still_scoring:
        print("\n(the scoring job ended before the busy measurement did: part of it ran on a quiet machine)")


if __name__ == "__main__":
    main()
