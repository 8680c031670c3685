"""Peak RSS of ``idcmap tile`` against slide size, on 40x-style slides (0.25 µm/px).

Builds slides of about 10k², 30k² and 60k² level-0 pixels covered edge to edge with real Kaggle
patches (every patch is tissue: the most work per pixel), written as JPEG-tiled pyramids (levels
1/4/16) and, for the largest, also as a single-level tiled TIFF (the worst case: every patch is read
at 0.25 µm/px and resized 16x). Each tiling runs in a fresh process, which reports its own peak RSS
(ru_maxrss).

    python benchmarks/bench_tiling_memory.py [--work /tmp/idcmap-bench] [--quick]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from idcmap.slide_tiling import list_patches, load_patch, write_pyramid

PATIENTS = Path(__file__).resolve().parents[2] / "shared" / "data" / "idc" / "patients"


def mosaic(side_2_5x: int) -> np.ndarray:
    """A side x side image at 2.5x, every 50 px cell filled with a real dataset patch."""
    patches = [p.path for d in sorted(PATIENTS.iterdir()) for p in list_patches(d)]
    cells = -(-side_2_5x // 50)
    out = np.full((cells * 50, cells * 50, 3), 255, np.uint8)
    for i in range(cells * cells):
        r, c = divmod(i, cells)
        out[r * 50 : (r + 1) * 50, c * 50 : (c + 1) * 50] = load_patch(patches[i % len(patches)])
    return out[:side_2_5x, :side_2_5x]


# the child reports its own peak RSS (ru_maxrss, KiB on Linux) as its last stderr line
CHILD = (
    "import resource, sys\n"
    "from jobs.cli import cli\n"
    "try:\n    cli(sys.argv[1:], standalone_mode=False)\n"
    "finally:\n    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
)


def peak_rss_of(args: list[str]) -> tuple[float, float, str]:
    """Run ``idcmap ARGS`` in a fresh process; (peak RSS MiB, seconds, last output line)."""
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, *args], capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1]
    )
    seconds = time.perf_counter() - t
    if proc.returncode:
        raise SystemExit(proc.stderr)
    rss = int(proc.stderr.strip().splitlines()[-1]) / 1024
    return rss, seconds, proc.stdout.strip().splitlines()[-1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "idcmap-bench")
    ap.add_argument("--quick", action="store_true", help="only the 10k² slide")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    sides = [640] if args.quick else [640, 1920, 3840]  # at 2.5x; x16 = 10,240 / 30,720 / 61,440 px
    cases = [(s, (1, 4, 16)) for s in sides] + ([] if args.quick else [(sides[-1], (1,))])
    rows = []
    for side, downsamples in cases:
        path = args.work / f"slide-{side * 16}-{len(downsamples)}lvl.tiff"
        if not path.exists():
            t = time.perf_counter()
            write_pyramid(path, mosaic(side), mpp=0.25, upsample=16, downsamples=downsamples)
            print(f"built {path.name} in {time.perf_counter() - t:.0f}s", file=sys.stderr)
        rss, seconds, line = peak_rss_of(["tile", str(path)])
        rows.append(
            (
                f"{side * 16:,} x {side * 16:,}",
                len(downsamples),
                path.stat().st_size / 2**20,
                rss,
                seconds,
                line.split(": ")[1].split(" in the")[0],
            )
        )
    print("| level 0 (px) | levels | file MiB | peak RSS MiB | seconds | result |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]:.0f} | {r[3]:.0f} | {r[4]:.1f} | {r[5]} |")


if __name__ == "__main__":
    main()
