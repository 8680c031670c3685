"""Does putting each network on its own training patches' scale pay out of fold? Each step alone.

    python benchmarks/bench_training_scale.py RUN_DIR [--cache-dir CACHE] [--json OUT]

RUN_DIR is a cross-validation run (``idcmap train --folds K --run-dir RUN_DIR``) whose Ray Train
checkpoints are still in ``fold-N/ray/``. Each fold's network is rebuilt from its last checkpoint,
with the weights as trained, and scores its held-out patients four ways:

- as trained, with the class-weight prior correction (how fold scores were made before 2026-12-03);
- Platt's fit on its own training patches (``on_training_scale``) in place of the prior correction;
- batch-norm statistics recomputed on its training patches without augmentation
  (``unaugmented_batch_norm``, here), with the prior correction;
- both.

``idcmap train`` does the second (2026-12-03): the batch-norm step ranks a little better but
holds the stain shifts of ``bench_stain_shift.py`` worse.

Each variant gets the bundle's cross-fitted figures (context weight, temperature and threshold of
each fold chosen on the other folds), the patch-alone ROC AUC pooled and per fold, and the 95 %
interval of its ROC AUC minus the first variant's, from 1,000 resamplings of whole patients.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from bench_ensemble import difference_interval
from bench_stain_shift import DATA

from idcmap.model import data as datalib
from idcmap.model.architectures import build
from idcmap.model.crossval import cross_fitted
from idcmap.model.make_bundle import (
    FOLD_INFO,
    FOLD_OOF,
    RECIPE_FILE,
    RECIPE_KEYS,
    class_weight_offset,
    on_training_scale,
    predict_batches,
)
from idcmap.model.metrics import classification_metrics, roc_auc
from idcmap.model.scoring import idc_logit, scoring_function
from idcmap.model.train import TrainConfig, latest_checkpoint


def unaugmented_batch_norm(model, images: np.ndarray, normalisation: dict, batch: int = 256) -> None:
    """Recompute ``model``'s batch-norm statistics as the average over ``images`` (its training
    patches) without augmentation: training leaves running averages of the augmented views, which
    sit apart from the patches it scores and differ from one training run to another."""
    import tensorflow as tf
    from keras import layers

    from idcmap.model.scoring import normalise

    norms = [layer for layer in model.layers if isinstance(layer, layers.BatchNormalization)]
    momenta = [layer.momentum for layer in norms]
    order = np.random.default_rng(0).permutation(len(images))
    for i, start in enumerate(range(0, len(order), batch)):
        for layer in norms:
            layer.momentum = i / (i + 1)  # the i-th batch's statistics weigh 1 / (i + 1): a plain mean
        x = tf.cast(images[np.sort(order[start : start + batch])], tf.float32)
        model(normalise(x, normalisation), training=True)
    for layer, momentum in zip(norms, momenta):
        layer.momentum = momentum


VARIANTS = ("as trained, prior correction", "Platt's fit on training patches", "batch norm recomputed", "both")


def fold_variants(cfg: TrainConfig, fold_dir: Path, patches: datalib.PatchSet) -> tuple[pd.DataFrame, dict]:
    """(the fold's out-of-fold rows, variant -> its logits of them)."""
    info, oof = json.loads((fold_dir / FOLD_INFO).read_text()), pd.read_parquet(fold_dir / FOLD_OOF)
    train, test = datalib.apply_split(patches, {"train": info["trained_on"], "validation": info["held_out"]})
    if not pd.DataFrame({"patient_id": test.patient_ids, "x": test.xy[:, 0], "y": test.xy[:, 1]}).equals(
        oof[["patient_id", "x", "y"]]
    ):
        raise SystemExit(f"{fold_dir}: its out-of-fold rows are not its held-out patients' patches")
    ckpt = latest_checkpoint(fold_dir / "ray")
    if ckpt is None:
        raise SystemExit(f"{fold_dir}: no Ray Train checkpoint left in ray/")
    model, norm = build(cfg.arch, cfg.width), info["normalisation"]
    model.load_weights(ckpt / "best.weights.h5")
    prior, score = class_weight_offset(cfg, train), scoring_function(model, norm)  # score reads the weights live
    raw, (a, c) = idc_logit(predict_batches(score, test.images)), on_training_scale(score, train)
    unaugmented_batch_norm(model, train.images, norm)
    raw_bn, (a_bn, c_bn) = idc_logit(predict_batches(score, test.images)), on_training_scale(score, train)
    return oof, {
        VARIANTS[0]: raw - prior,
        VARIANTS[1]: a * (raw - c),
        VARIANTS[2]: raw_bn - prior,
        VARIANTS[3]: a_bn * (raw_bn - c_bn),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--cache-dir", default=None, help="decoded-patch cache, as for idcmap train")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    recipe = json.loads((args.run_dir / RECIPE_FILE).read_text())
    cfg = TrainConfig(data_dirs=DATA, **{k: recipe[k] for k in RECIPE_KEYS if k in recipe})
    patches = datalib.load_patches_cached(DATA, args.cache_dir, cfg.stain_normalise)
    parts = [fold_variants(cfg, d, patches) for d in sorted(args.run_dir.glob("fold-*"))]
    oof = pd.concat([p[0] for p in parts], ignore_index=True)
    y, fold, patients = oof.label.to_numpy(), oof.fold.to_numpy(), oof.patient_id.to_numpy()
    results, first = {}, None
    for name in VARIANTS:
        variant = oof.assign(logit=np.concatenate([p[1][name] for p in parts]).astype(np.float32))
        scores = cross_fitted(variant)
        m = classification_metrics(y, scores[0], scores[1])
        r = {k: m[k] for k in ("roc_auc", "balanced_accuracy", "sensitivity", "specificity", "ece")}
        r["patch_only_roc_auc"] = roc_auc(y, variant.logit)
        r["per_fold_patch_only"] = [roc_auc(y[fold == f], variant.logit[fold == f]) for f in np.unique(fold)]
        if first is None:
            first = scores[0]
        else:
            r["roc_auc_minus_first_95"] = difference_interval(y, first, scores[0], patients)
        results[name] = r
        print(f"{name:34s}", ", ".join(f"{k} {np.round(v, 4)}" for k, v in r.items()))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
