"""Per-patient table: build-slide then tile, against the dataset's own patches (2.5x and 40x).

python benchmarks/rebuild_check.py [--work DIR] [--fades 0.25 0.4 0.55 0.7]

``--fades``: instead, the 2.5x slides blended that share of the way to white (paler sections) and
the share of the dataset's patches that tiling still finds as tissue at each.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from idcmap.slide_tiling import build_slide
from idcmap.slide_tiling.groundtruth import check_rebuild

PATIENTS = Path(__file__).resolve().parents[2] / "shared" / "data" / "idc" / "patients"


def faded_recall(fades: list[float], work: Path) -> None:
    print("| patient | dataset patches | " + " | ".join(f"recall, faded {f:g}" for f in fades) + " |")
    print("|---|---|" + "---|" * len(fades))
    found, total = dict.fromkeys(fades, 0), 0
    for patient in sorted(PATIENTS.iterdir()):
        checks = []
        for fade in fades:
            slide = work / f"{patient.name}-faded.tiff"
            build_slide(patient, slide, fade=fade)
            checks.append(check_rebuild(patient, slide))
            found[fade] += checks[-1].recovered
            slide.unlink()
        total += checks[0].dataset_patches
        recalls = " | ".join(f"{c.recall:.2%}" for c in checks)
        print(f"| {patient.name} | {checks[0].dataset_patches} | {recalls} |")
    print(f"| all | {total} | " + " | ".join(f"{found[f] / total:.2%}" for f in fades) + " |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=Path(tempfile.mkdtemp(prefix="idcmap-rebuild-")))
    ap.add_argument("--fades", type=float, nargs="+", help="blend the 2.5x slides this share toward white")
    args = ap.parse_args()
    if args.fades:
        return faded_recall(args.fades, args.work)
    print(
        "| patient | dataset patches | recall 2.5x | recall 40x | extra | mean abs diff | worst patch | 40x build s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    totals = [0, 0, 0]
    for patient in sorted(PATIENTS.iterdir()):
        checks = []
        for scan_mpp in (None, 0.25):
            slide = args.work / f"{patient.name}-{scan_mpp or 4}.tiff"
            t = time.perf_counter()
            build_slide(patient, slide, scan_mpp=scan_mpp)
            build_s = time.perf_counter() - t
            checks.append(check_rebuild(patient, slide))
            slide.unlink()
        a, b = checks
        totals = [totals[0] + a.dataset_patches, totals[1] + a.recovered, totals[2] + b.recovered]
        print(
            f"| {patient.name} | {a.dataset_patches} | {a.recall:.2%} | {b.recall:.2%} | "
            f"{a.extra + b.extra} | {max(a.mean_abs_diff, b.mean_abs_diff):.2f} | "
            f"{max(a.worst_patch_diff, b.worst_patch_diff):.2f} | {build_s:.1f} |",
            flush=True,
        )
    print(f"| all | {totals[0]} | {totals[1] / totals[0]:.2%} | {totals[2] / totals[0]:.2%} | | | | |")


if __name__ == "__main__":
    main()
