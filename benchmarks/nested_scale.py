"""The logit-scale step chosen inside the folds: Platt's fit on training patches or the class-weight
prior correction, by the inner networks of ``nested_protocol.py``.

    python benchmarks/nested_scale.py RUN_DIR NEST_DIR [--cache-dir /path/to/cache]

RUN_DIR is a cross-validation run whose folds were scored both ways (``fold-N/oof.parquet`` on the
training patches' scale, ``fold-N/oof-before-alignment.parquet`` as trained, prior-corrected: as
``runs/idc-default`` keeps them); NEST_DIR holds the same protocol's three inner networks
(``nested_protocol.py --nest DIR``, the candidate's folder). For outer fold k the two inner
networks that never saw fold k give the pooled inner ROC AUC (patch alone) of each step; the
higher one is fold k's step, and the nested figures are the bundle's cross-fitted ones over the
folds so scored.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
from bench_stain_shift import DATA
from nested_protocol import training_config

from idcmap.model import data as datalib
from idcmap.model.crossval import out_of_fold_report
from idcmap.model.make_bundle import FOLD_INFO, FOLD_OOF, FOLDS_FILE, RECIPE_FILE, class_weight_offset
from idcmap.model.metrics import roc_auc

STEPS = {"Platt's fit on training patches": FOLD_OOF, "prior correction": "oof-before-alignment.parquet"}


def inner_logits(nest: Path, patches) -> pd.DataFrame:
    """The inner networks' scores with both steps: ``logit`` (Platt's) and ``prior``."""
    # the class weights the inner networks trained with (imbalance rule and patient weighting)
    cfg = training_config(json.loads((nest / "trained-on-fold-0" / RECIPE_FILE).read_text()))
    out = []
    for d in sorted(nest.glob("trained-on-fold-*")):
        s = pd.read_parquet(d / "shifted.parquet")
        info = json.loads((d / "fold-1" / FOLD_INFO).read_text())
        train = datalib.apply_split(patches, {"train": info["trained_on"], "validation": []})[0]
        raw = s.logit / info["logit_scale"] + info["logit_offset"]
        out.append(s.assign(prior=raw - class_weight_offset(cfg, train)))
    return pd.concat(out, ignore_index=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("nest", type=Path)
    ap.add_argument("--cache-dir", default=None, help="decoded-patch cache, as for idcmap train")
    args = ap.parse_args()

    folds = {p: int(f) for p, f in json.loads((args.run_dir / FOLDS_FILE).read_text()).items()}
    patches = datalib.load_patches_cached([str(d) for d in DATA], args.cache_dir)
    inner = inner_logits(args.nest, patches)
    rows = []
    for k in range(max(folds.values()) + 1):
        r = inner[(inner.outer_fold != k) & (inner.trained_on_fold != k)]
        aucs = dict(zip(STEPS, (roc_auc(r.label, r.logit), roc_auc(r.label, r.prior)), strict=True))
        chosen = max(aucs, key=lambda name: aucs[name])
        print(f"outer fold {k}: " + "; ".join(f"{n} {a:.4f}" for n, a in aucs.items()) + f"; chosen {chosen}")
        rows.append(pd.read_parquet(args.run_dir / f"fold-{k}" / STEPS[chosen]))
    report = out_of_fold_report(pd.concat(rows, ignore_index=True))
    print(
        "nested out-of-fold: "
        + ", ".join(f"{key} {report[key]:.4f}" for key in ("roc_auc", "balanced_accuracy", "ece", "patch_only_roc_auc"))
        + f"; ROC AUC 95 % {report['intervals_95']['roc_auc'][0]:.3f}-{report['intervals_95']['roc_auc'][1]:.3f}"
    )


if __name__ == "__main__":
    main()
