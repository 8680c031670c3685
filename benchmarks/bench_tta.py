"""Test-time augmentation, out of fold: does averaging a patch's 8 flips and rotations pay?

    python benchmarks/bench_tta.py RUN_DIR [--cache-dir /path/to/cache]

Each fold model of a cross-validation run (``idcmap train --folds K --run-dir RUN_DIR``) scores its
held-out patients' patches in the 8 dihedral orientations; a patch's logit is the mean over none,
over the 4 of horizontal and vertical flips, and over all 8. Each variant then goes through the
same cross-fitted context, temperature and threshold as the bundle's figures
(:func:`idcmap.model.crossval.out_of_fold_report`). Costs 8x the network's inference.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from bench_stain_shift import _load_folds, _normalised, fold_logits, oof_images

from idcmap.model.crossval import out_of_fold_report

VARIANTS = {"none": [0], "4 flips": [0, 2, 4, 6], "8 flips and rotations": list(range(8))}
KEYS = ("roc_auc", "balanced_accuracy", "sensitivity", "specificity", "ece", "patch_only_roc_auc")


def oriented(images: np.ndarray, k: int) -> np.ndarray:
    """Orientation ``k`` in 0..7 of (N, H, W, 3) patches: k % 4 quarter turns, mirrored when k >= 4."""
    x = np.rot90(images, k % 4, axes=(1, 2))
    return np.ascontiguousarray(x[:, :, ::-1] if k >= 4 else x)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--cache-dir", default=None, help="decoded-patch cache, as for idcmap train")
    args = ap.parse_args()

    folds = _load_folds(args.run_dir)
    oof = pd.concat([f[2] for f in folds], ignore_index=True)
    images, fold_of = oof_images(oof, args.cache_dir), oof.fold.to_numpy()
    pids = oof.patient_id.to_numpy()
    normalised = all(info.get("stain_normalised") for info, *_ in folds)  # as the run trained
    prepare = (lambda x, m: _normalised(x, pids[m])) if normalised else None
    logits = np.stack([fold_logits(folds, fold_of, oriented(images, k), prepare) for k in range(8)])
    print(f"unrotated logits reproduce the stored ones to {np.abs(logits[0] - oof.logit).max():.1e}")
    print("| test-time views | " + " | ".join(KEYS) + " | per-patient worst tenth bal. acc. |")
    print("|---" * (len(KEYS) + 2) + "|")
    for name, views in VARIANTS.items():
        r = out_of_fold_report(oof.assign(logit=logits[views].mean(axis=0)))
        worst = r["per_patient_spread"]["balanced_accuracy"]["worst_tenth"]
        print(f"| {name} | " + " | ".join(f"{r[k]:.4f}" for k in KEYS) + f" | {worst:.3f} |")


if __name__ == "__main__":
    main()
