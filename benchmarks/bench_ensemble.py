"""Two networks out of fold, patient by patient: does one rank better, does their mean pay?

    python benchmarks/bench_ensemble.py RUN_DIR [--reference runs/idc-default] [--json OUT]

RUN_DIR is a cross-validation run (``idcmap train --folds K --run-dir RUN_DIR``), finished or not:
its folds done so far are compared with the reference's out-of-fold scores on the same patients
(the reference: another finished run, by default the 3-fold run of the shipped protocol, or a
bundle's stored ``oof_predictions.parquet``), which must have been dealt the reference's folds
(copy its ``folds.json`` to ``RUN_DIR/folds.json`` before the run starts; anything else is refused). Patch-alone logits,
so nothing is chosen on the patients measured; the mean of the two networks' logits is the
ensemble. 95 % intervals of each difference come from resampling whole patients. When every fold
is done, each variant also gets the bundle's cross-fitted figures (context, temperature, threshold).
Each fold's ROC AUC alone is printed too: fold models whose logits sit at different levels rank
well within their fold and worse pooled. Runs scored before 2026-12-03 store their fold models'
logits without the training-patch scale (``on_training_scale``) that later runs and the bundle
apply, so only their per-fold figures compare with a later reference.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from idcmap.model import load_bundle
from idcmap.model.bundle import OOF_FILE
from idcmap.model.crossval import out_of_fold_report, patient_resamples
from idcmap.model.make_bundle import FOLD_OOF
from idcmap.model.metrics import roc_auc

KEY = ["patient_id", "x", "y"]
REPORTED = ("roc_auc", "balanced_accuracy", "sensitivity", "specificity", "ece")


def out_of_fold(path: Path) -> pd.DataFrame:
    """A run's folds' out-of-fold scores so far, or a cross-validated bundle's stored ones."""
    folds = sorted(path.glob(f"fold-*/{FOLD_OOF}"))
    if folds:
        return pd.concat([pd.read_parquet(f) for f in folds], ignore_index=True)
    return pd.read_parquet(load_bundle(path).file(OOF_FILE))


def paired(run_dir: Path, reference: Path) -> tuple[pd.DataFrame, bool]:
    """(the reference's out-of-fold rows that the run has scored, with its logit as ``logit_run``;
    whether the run has scored them all)."""
    ref, run = out_of_fold(reference), out_of_fold(run_dir)
    both = ref.merge(run[KEY + ["fold", "logit"]], on=KEY, suffixes=("", "_run"))
    if len(both) != len(run) or (both.fold != both.fold_run).any():
        raise SystemExit(f"{run_dir}: its folds are not {reference}'s (other data or fold assignment)")
    return both, len(both) == len(ref)


def difference_interval(y, a, b, patients) -> list[float]:
    """95 % interval of ROC AUC(b) - ROC AUC(a) over resamplings of whole patients."""
    diffs = [roc_auc(y, b, w) - roc_auc(y, a, w) for w in patient_resamples(patients)]
    return [float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--reference", type=Path, default=Path("runs/idc-default"))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    both, complete = paired(args.run_dir, args.reference)
    y, patients = both["label"].to_numpy(), both["patient_id"].to_numpy()
    ref, run = both["logit"].to_numpy(), both["logit_run"].to_numpy()
    variants = {"reference": ref, "run": run, "mean of the two": (ref + run) / 2}
    folds = sorted(int(f) for f in both.fold.unique())
    fold = both["fold"].to_numpy()
    print(f"{len(both)} patches of {len(set(patients))} patients, folds {folds}")
    out: dict = {"folds": folds, "n_patches": len(both), "variants": {}}
    for name, z in variants.items():
        row = {"patch_only_roc_auc": roc_auc(y, z)}
        # each fold's own model alone: a level that differs between fold models lowers the pooled figure
        row["per_fold_patch_only_roc_auc"] = [roc_auc(y[fold == f], z[fold == f]) for f in folds]
        if name != "reference":
            row["minus_reference_95"] = difference_interval(y, ref, z, patients)
        if complete:
            report = out_of_fold_report(both[KEY + ["source", "label", "fold"]].assign(logit=z))
            row.update({k: report[k] for k in REPORTED})
        out["variants"][name] = row
        print(f"{name:16s} " + ", ".join(f"{k} {np.round(v, 4)}" for k, v in row.items()))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
