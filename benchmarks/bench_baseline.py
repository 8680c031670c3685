"""The slide baseline step, with and without, on the out-of-fold scores of cross-validated runs.

    python benchmarks/bench_baseline.py RUN_DIR... [--json OUT]

Each RUN_DIR is a finished ``idcmap train --folds 3 --run-dir RUN_DIR`` run (its ``fold-N/oof.parquet``).
Its out-of-fold scores are cross-fitted as the bundle does (each fold's context weight, baseline
weight and reference, temperature and threshold chosen on the other folds), once with the baseline
weight held at 0 and once chosen among ``BASELINE_WEIGHTS``; pooled ROC AUC, balanced accuracy and
ECE of each, the per-fold weights chosen, and a 95 % interval of the ROC AUC change over resampled
patients. Runs of different networks on the same patients show whether the step's gain is one
network's or the patients'. Nothing is trained or scored.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
from bench_ensemble import difference_interval, out_of_fold

from idcmap.model.crossval import cross_fitted
from idcmap.model.metrics import classification_metrics

REPORTED = ("roc_auc", "balanced_accuracy", "sensitivity", "specificity", "ece")


def compare(oof: pd.DataFrame) -> dict:
    y, patients = oof["label"].to_numpy(), oof["patient_id"].to_numpy()
    out, probs = {}, {}
    for name, steps in (("without", {"baselines": (0.0,)}), ("with", {})):
        prob, thr, per_fold = cross_fitted(oof, **steps)
        m = classification_metrics(y, prob, thr)
        out[name] = {k: m[k] for k in REPORTED} | {"weights": [f["baseline_weight"] for f in per_fold.values()]}
        probs[name] = prob
    out["roc_auc_change_95"] = difference_interval(y, probs["without"], probs["with"], patients)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dirs", nargs="+", type=Path)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    header = ("run", "ROC AUC without / with", "change, 95 %", "balanced acc. without / with", "ECE without / with")
    print("| " + " | ".join(header) + " | weights |\n" + "|---" * (len(header) + 1) + "|")
    result = {}
    for run in args.run_dirs:
        oof = out_of_fold(run)
        r = result[str(run)] = compare(oof)
        a, b, (lo, hi) = r["without"], r["with"], r["roc_auc_change_95"]
        print(
            f"| {run.name} | {a['roc_auc']:.4f} / {b['roc_auc']:.4f} | {lo:+.4f} to {hi:+.4f} | "
            f"{a['balanced_accuracy']:.4f} / {b['balanced_accuracy']:.4f} | {a['ece']:.4f} / {b['ece']:.4f} | "
            f"{', '.join(str(w) for w in b['weights'])} |",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
