"""One fold's stain-shift screen: cheap to run on a training run whose other folds are not done yet.

    python benchmarks/stain_screen.py RUN_DIR [RUN_DIR ...] [--fold 0] [--cache-dir /path/to/cache]

For each run, fold N's model scores fold N's held-out patients (patch alone: no neighbour context,
no calibration; each patient normalised first where the run trained so) unshifted and under the
shifts of ``bench_stain_shift.py``; it reports the ROC AUC, the specificity at the operating point
that gives sensitivity 0.89 unshifted (each run's own), and how ROC AUC and sensitivity at that
point change under each shift; and the unshifted ROC AUC after the neighbour-context step, its
weight chosen on the same scores for each run (a network that sees its neighbourhood is compared
there: each patient is shifted whole before its neighbourhoods are built). The runs must share the
fold (same patients and seed: ``idcmap train --folds 3`` on the same data). Not the full benchmark:
one fold (a third of the patients), and a threshold set on the scores it is measured on; use it to
decide which arms deserve all folds, then ``bench_stain_shift.py`` on those.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from bench_stain_shift import OTHER_STAINS, _normalised, _vectors_of, oof_images, with_transfer

from idcmap.model.architectures import CONTEXT_ARCHS
from idcmap.model.crossval import choose_context_weight, context_logits, oof_grid
from idcmap.model.data import neighbourhoods
from idcmap.model.make_bundle import FOLD_INFO, FOLD_MODEL, FOLD_OOF, predict_batches
from idcmap.model.metrics import roc_auc
from idcmap.model.scoring import idc_logit, scoring_function

SENSITIVITY = 0.89  # the shipped model's out-of-fold sensitivity, rounded: the operating point
NAMES = ["none", "H x0.6", "H x0.5", "E x0.6", "JPEG q50"]


def _prepared(x, grid, stain_normalised: bool, cells: int):
    """Patches as a fold network trained on them: each patient normalised first where the run
    trained so, beside their neighbourhoods of ``cells`` a side for a network that sees them."""
    if stain_normalised:
        x = _normalised(x, grid[2])
    return neighbourhoods(x, *grid, cells) if cells else x


def main():
    import keras

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dirs", type=Path, nargs="+")
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--cache-dir", default=None, help="decoded-patch cache, as for idcmap train")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    oof = pd.read_parquet(args.run_dirs[0] / f"fold-{args.fold}" / FOLD_OOF)
    images = oof_images(oof, args.cache_dir)
    y, pids = oof.label.to_numpy(), oof.patient_id.to_numpy()
    grid = oof_grid(oof)
    shifts = with_transfer(pids, _vectors_of(images, pids))
    shifted = {n: shifts[n](images) for n in [*NAMES, OTHER_STAINS]}

    results = {}
    for run in args.run_dirs:
        d = run / f"fold-{args.fold}"
        if not pd.read_parquet(d / FOLD_OOF)[["patient_id", "x", "y"]].equals(oof[["patient_id", "x", "y"]]):
            raise SystemExit(f"{run}: fold {args.fold} holds other patches than {args.run_dirs[0]}'s")
        info = json.loads((d / FOLD_INFO).read_text())
        model = keras.saving.load_model(d / FOLD_MODEL, compile=False)
        score = scoring_function(model, info["normalisation"])
        normalised, cells = bool(info.get("stain_normalised")), CONTEXT_ARCHS.get(model.name, 0)
        z = {n: idc_logit(predict_batches(score, _prepared(x, grid, normalised, cells))) for n, x in shifted.items()}
        thr = np.quantile(z["none"][y == 1], 1.0 - SENSITIVITY)
        r = {n: {"roc_auc": roc_auc(y, v), "sensitivity": float((v[y == 1] >= thr).mean())} for n, v in z.items()}
        r["none"]["specificity"] = float((z["none"][y == 0] < thr).mean())
        scored = oof.assign(logit=z["none"])
        weight = r["none"]["context_weight"] = choose_context_weight(scored)
        r["none"]["roc_auc_context"] = roc_auc(y, context_logits(scored, weight))
        results[str(run)] = r
        base = r["none"]
        print(
            f"{run.name}: ROC AUC {base['roc_auc']:.4f}, specificity {base['specificity']:.3f} at sensitivity "
            f"{base['sensitivity']:.3f}; with the neighbour-context step {base['roc_auc_context']:.4f} "
            f"(weight {base['context_weight']}); "
            + "; ".join(
                f"{n} {v['roc_auc'] - base['roc_auc']:+.4f} / {v['sensitivity'] - base['sensitivity']:+.3f}"
                for n, v in r.items()
                if n != "none"
            ),
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps({"fold": args.fold, "runs": results}, indent=1))


if __name__ == "__main__":
    main()
