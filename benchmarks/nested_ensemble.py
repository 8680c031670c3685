"""An ensemble of fold models, measured inside the folds: do networks each trained on part of the
training patients, their logits averaged, beat one network trained on all of them?

    python benchmarks/nested_ensemble.py RUN_DIR NEST_DIR [--json OUT]

RUN_DIR is a cross-validation run (``runs/idc-default``: fold k's network trained on the other two
folds' patients); NEST_DIR holds the same protocol's three inner networks (``nested_protocol.py
--nest DIR``, the candidate's folder), each trained on one fold alone. Fold k is scored four ways,
each by networks that never saw it: the run's network (two thirds of the patients), each of the
two inner networks alone (one third each), and the mean of those two networks' logits. That is the
shipped bundle's choice in small: one network on all patients, or an ensemble of networks each on
part of them (an ensemble of the three fold models would see two thirds each, here one half of the
training patients each). Every variant gets the bundle's cross-fitted figures (context,
temperature, threshold); the inner variants also the cost of haematoxylin x0.6 (patch alone, at
the point of sensitivity 0.89), as ``nested_protocol.py`` measures it. Nothing is trained.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
from bench_ensemble import KEY, REPORTED, difference_interval
from nested_protocol import inner_figures

from idcmap.model.crossval import out_of_fold_report
from idcmap.model.make_bundle import FOLD_OOF

K = 3
RUN, FIRST, SECOND, MEAN = "one network, 2/3", "one network, 1/3 (a)", "one network, 1/3 (b)", "mean of (a) and (b)"


def fold_rows(run_dir: Path, nest: Path, k: int) -> pd.DataFrame:
    """Fold k's patches: the run's logit and the two inner networks' (``logit_a``, ``logit_b``,
    with their H x0.6 logits), all on their networks' training-patch scale."""
    rows = pd.read_parquet(run_dir / f"fold-{k}" / FOLD_OOF)
    n = len(rows)
    for name, j in zip("ab", [j for j in range(K) if j != k], strict=True):
        s = pd.read_parquet(nest / f"trained-on-fold-{j}" / "shifted.parquet")
        s = s[s.outer_fold == k][KEY + ["logit", "logit_shifted"]]
        rows = rows.merge(s.rename(columns={"logit": f"logit_{name}", "logit_shifted": f"shifted_{name}"}), on=KEY)
    if len(rows) != n:
        raise SystemExit(f"{nest}: its networks did not score all of {run_dir}'s fold {k}")
    rows["logit_mean"] = (rows.logit_a + rows.logit_b) / 2
    rows["shifted_mean"] = (rows.shifted_a + rows.shifted_b) / 2
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("nest", type=Path)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    rows = pd.concat([fold_rows(args.run_dir, args.nest, k) for k in range(K)], ignore_index=True)
    columns = {RUN: "logit", FIRST: "logit_a", SECOND: "logit_b", MEAN: "logit_mean"}
    result: dict = {}
    for name, col in columns.items():
        report = out_of_fold_report(rows.assign(logit=rows[col]))
        figures = {key: report[key] for key in REPORTED} | {
            "roc_auc_95": report["intervals_95"]["roc_auc"],
            "patch_only_roc_auc": report["patch_only_roc_auc"],
        }
        if col != "logit":
            shift = inner_figures(rows.assign(logit=rows[col], logit_shifted=rows[col.replace("logit", "shifted")]))
            figures |= {"h06_auc_drop": shift["auc_drop"], "h06_sensitivity_drop": shift["sensitivity_drop"]}
        result[name] = figures
        lo, hi = figures["roc_auc_95"]
        values = ", ".join(f"{k} {v:.4f}" for k, v in figures.items() if k != "roc_auc_95")
        print(f"{name}: {values}; ROC AUC 95 % {lo:.3f}-{hi:.3f}")
    y, patients = rows.label.to_numpy(), rows.patient_id.to_numpy()
    lo, hi = difference_interval(y, rows.logit.to_numpy(), rows.logit_mean.to_numpy(), patients)
    result["mean_minus_run_patch_only_95"] = [lo, hi]
    print(f"patch-alone ROC AUC, {MEAN} minus {RUN}: 95 % {lo:+.4f} to {hi:+.4f} (resampling patients)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
