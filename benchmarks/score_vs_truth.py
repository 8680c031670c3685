"""Score rebuilt patients end to end and compare each IDC map with the ground truth (Dice, AUC).

    python benchmarks/score_vs_truth.py [--patients 24] [--model models/idc-default] [--work DIR]

Rebuilds patients of ../shared/data/idc/patients with ``build-slide`` (2.5x, with masks), runs
``idcmap score`` on them as one job, and prints a per-patient table. Each patient is marked with
the bundle's split: patients the model was trained on flatter it; "validation" rows are the honest
ones.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

from idcmap.jobs.render.truth import map_agreement
from idcmap.slide_tiling import build_slide

ROOT = Path(__file__).resolve().parents[1]

PATIENTS = ROOT.parent / "shared" / "data" / "idc" / "patients"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--patients", type=int, default=24)
    ap.add_argument("--model", type=Path, default=ROOT / "models" / "idc-default")
    ap.add_argument("--work", type=Path, default=Path(tempfile.mkdtemp(prefix="idcmap-truth-")))
    args = ap.parse_args()
    meta = json.loads((args.model / "model.json").read_text())
    validation = set(meta["split"]["validation"])
    slides = args.work / "slides"
    for p in sorted(PATIENTS.iterdir())[: args.patients]:
        (slides / p.name).mkdir(parents=True, exist_ok=True)
        build_slide(p, slides / p.name / f"{p.name}.tiff", args.work / f"{p.name}-mask.png")
    job = args.work / "job"
    subprocess.run(
        [sys.executable, "-m", "idcmap", "score", str(slides), "--out", str(job), "--model", str(args.model)],
        check=True,
        cwd=ROOT,
    )
    threshold = float(meta["threshold"]["value"])
    print(f"model {meta['name']}, threshold {threshold:.3f}")
    print("| patient | split | patches | IDC patches | scored | Dice | AUC |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for p in sorted(PATIENTS.iterdir())[: args.patients]:
        prob = np.load(job / "maps" / p.name / p.name / "prob.npy")
        mask = cv2.imread(str(args.work / f"{p.name}-mask.png"), cv2.IMREAD_GRAYSCALE)
        a = map_agreement(prob, mask, threshold)
        split = "validation" if p.name in validation else "train"
        rows.append((split, a))
        print(
            f"| {p.name} | {split} | {a['patches']} | {a['idc_patches']} | {a['scored']} | "
            f"{a['dice']:.3f} | {a['auc']:.3f} |"
        )
    for split in ("validation", "train"):
        sel = [a for s, a in rows if s == split]
        if sel:
            print(
                f"| median ({split}, {len(sel)}) | | | | | {np.median([a['dice'] for a in sel]):.3f} | "
                f"{np.nanmedian([a['auc'] for a in sel]):.3f} |"
            )


if __name__ == "__main__":
    main()
