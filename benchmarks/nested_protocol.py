"""Nested cross-validation of the training protocol: is the out-of-fold figure of a protocol chosen
among several still held out once the choice itself is made inside the folds?

    python benchmarks/nested_protocol.py NAME=RUN_DIR[:key=value,...] ... --nest runs/nested
        [--cache-dir /path/to/cache] [--cpus 2] [--json OUT]

Each candidate is a training protocol: the first candidate's run's ``recipe.json`` (a finished
``idcmap train --folds K`` run on ``../shared/data/idc``) with the ``key=value`` changes given (keys
of ``recipe.json``: ``stain_strength=0``, ``weight_decay=0.02``, ``arch=idcnet_deep`` ...). Every
candidate's RUN_DIR holds, or is given, that run's folds.

For outer fold k the choice sees only the other folds: each candidate's network trained on one of
them alone scores the rest of them (so K networks a candidate in all, each on a K-th of the patients,
kept under ``--nest``; with K = 3, the network trained on fold i scores fold j and the one trained on
j scores i). The rule, fixed before any of it ran:

- a candidate is eligible if, on those pooled inner scores (patch alone, each network on its own
  training patches' scale), scaling haematoxylin by 0.6 lowers ROC AUC by at most 0.02 and the
  sensitivity at the point that gives 0.89 unshifted by at most 0.05 (the issue's stain floors);
- the eligible candidate of the highest inner ROC AUC is chosen; if none is eligible, the one that
  loses the least sensitivity under the shift.

Fold k's out-of-fold scores are then the chosen candidate's own fold-k network's (trained on the
other folds, as in its cross-validation; trained here if its run lacks it), and the nested figures
are the bundle's cross-fitted ones (context, temperature, threshold) over the K folds so chosen.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from bench_stain_shift import DATA, SHIFTS
from stain_screen import SENSITIVITY  # the operating point: the shipped model's sensitivity, rounded

from idcmap.jobs.cli import configure_logging
from idcmap.model import data as datalib
from idcmap.model.crossval import out_of_fold_report
from idcmap.model.make_bundle import (
    FOLD_INFO,
    FOLD_MODEL,
    FOLDS_FILE,
    RECIPE_FILE,
    RECIPE_KEYS,
    check_recipe,
    predict_batches,
    train_fold,
)
from idcmap.model.metrics import roc_auc
from idcmap.model.scoring import idc_logit, scoring_function
from idcmap.model.train import TrainConfig

SHIFT = "H x0.6"
MAX_AUC_DROP, MAX_SENSITIVITY_DROP = 0.02, 0.05
REPORTED = ("roc_auc", "balanced_accuracy", "sensitivity", "specificity", "ece")


def _value(text: str):
    """A recipe value as written on the command line: a JSON number or boolean, else a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def training_config(recipe: dict, **kw) -> TrainConfig:
    """The TrainConfig of a run's recipe (its ``recipe.json``, or one changed) on ../shared/data/idc."""
    return TrainConfig(data_dirs=[str(d) for d in DATA], **{k: recipe[k] for k in RECIPE_KEYS if k in recipe}, **kw)


def parse_candidates(specs: list[str], cache_dir, cpus: int) -> dict[str, tuple[TrainConfig, Path]]:
    """NAME -> (its TrainConfig, its outer run directory)."""
    out: dict[str, tuple[TrainConfig, Path]] = {}
    base = None
    for spec in specs:
        name, _, rest = spec.partition("=")
        run, _, changes = rest.partition(":")
        if base is None:
            base = json.loads((Path(run) / RECIPE_FILE).read_text())
        recipe = dict(base)
        for change in filter(None, changes.split(",")):
            key, _, value = change.partition("=")
            if key not in RECIPE_KEYS:
                raise SystemExit(f"{spec}: {key} is not a recipe key ({', '.join(RECIPE_KEYS)})")
            recipe[key] = _value(value)
        out[name] = (training_config(recipe, cache_dir=cache_dir, cpus=cpus), Path(run).resolve())
    return out


def inner_scores(cfg: TrainConfig, patches, folds: dict[str, int], j: int, nest: Path) -> pd.DataFrame:
    """Fold ``j``'s patients alone train a network with ``cfg``; its patch-alone logits (on its
    training patches' scale) of the other folds' patches, unshifted (``logit``) and under the shift
    (``logit_shifted``), with each patch's outer fold."""
    run_dir = nest / f"trained-on-fold-{j}"
    run_dir.mkdir(parents=True, exist_ok=True)
    cached = run_dir / "shifted.parquet"
    if cached.exists():
        return pd.read_parquet(cached)
    check_recipe(cfg, 2, run_dir)
    groups = {p: 0 if f == j else 1 for p, f in folds.items()}  # group 1 (the other folds) is held out
    oof = train_fold(cfg, patches, groups, 1, run_dir)
    import keras

    fold_dir = run_dir / "fold-1"
    info = json.loads((fold_dir / FOLD_INFO).read_text())
    score = scoring_function(keras.saving.load_model(fold_dir / FOLD_MODEL, compile=False), info["normalisation"])
    test = datalib.apply_split(patches, {"train": [], "validation": info["held_out"]})[1]
    if not (test.patient_ids == oof.patient_id.to_numpy()).all():
        raise SystemExit(f"{run_dir}: its scores are not of its held-out patches in order")
    shifted = idc_logit(predict_batches(score, SHIFTS[SHIFT](test.images)))
    oof["logit_shifted"] = (info["logit_scale"] * (shifted - info["logit_offset"])).astype(np.float32)
    oof["outer_fold"] = [folds[p] for p in oof.patient_id]
    oof["trained_on_fold"] = j
    oof.to_parquet(cached, index=False)
    return oof


def inner_figures(rows: pd.DataFrame) -> dict:
    """ROC AUC of pooled inner scores, and what the shift does to it and to the sensitivity."""
    y, z, zs = rows.label.to_numpy(), rows.logit.to_numpy(), rows.logit_shifted.to_numpy()
    thr = np.quantile(z[y == 1], 1.0 - SENSITIVITY)
    auc = roc_auc(y, z)
    auc_drop = auc - roc_auc(y, zs)
    sens_drop = float((z[y == 1] >= thr).mean() - (zs[y == 1] >= thr).mean())
    eligible = auc_drop <= MAX_AUC_DROP and sens_drop <= MAX_SENSITIVITY_DROP
    return {"roc_auc": auc, "auc_drop": auc_drop, "sensitivity_drop": sens_drop, "eligible": eligible}


def choose(figures: dict[str, dict]) -> str:
    """The rule of the module docstring."""
    eligible = [n for n, f in figures.items() if f["eligible"]]
    if eligible:
        return max(eligible, key=lambda n: figures[n]["roc_auc"])
    return min(figures, key=lambda n: figures[n]["sensitivity_drop"])


def outer_fold(cfg: TrainConfig, run_dir: Path, patches, folds: dict[str, int], k: int, n_folds: int) -> pd.DataFrame:
    """The candidate's fold-k out-of-fold rows (trained on the other folds), from its run or trained."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / FOLDS_FILE
    if not path.exists():
        path.write_text(json.dumps(folds, indent=0, sort_keys=True))
    elif {p: int(f) for p, f in json.loads(path.read_text()).items()} != folds:
        raise SystemExit(f"{run_dir}: its folds are not the first candidate's")
    check_recipe(cfg, n_folds, run_dir)
    return train_fold(cfg, patches, folds, k, run_dir)


def _print_choice(k: int, figures: dict[str, dict], chosen: str) -> None:
    print(f"outer fold {k}: chosen {chosen}")
    for name, f in figures.items():
        print(
            f"  {name:12s} inner ROC AUC {f['roc_auc']:.4f}; {SHIFT}: AUC -{f['auc_drop']:.4f}, "
            f"sensitivity -{f['sensitivity_drop']:.3f}; {'eligible' if f['eligible'] else 'not eligible'}",
            flush=True,
        )


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("candidates", nargs="+", help="NAME=RUN_DIR[:key=value,...]; the first one's recipe is the base")
    ap.add_argument("--nest", type=Path, required=True, help="where the inner networks are kept (resumable)")
    ap.add_argument("--cache-dir", default=None, help="decoded-patch cache, as for idcmap train")
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    configure_logging(0)  # training progress, as idcmap train shows it

    candidates = parse_candidates(args.candidates, args.cache_dir, args.cpus)
    first = next(iter(candidates.values()))
    folds = {p: int(f) for p, f in json.loads((first[1] / FOLDS_FILE).read_text()).items()}
    n_folds = len(set(folds.values()))
    patches = datalib.load_patches_cached(
        first[0].data_dirs, args.cache_dir, limit_per_patient=first[0].limit_per_patient
    )
    inner = {
        name: pd.concat([inner_scores(cfg, patches, folds, j, args.nest.resolve() / name) for j in range(n_folds)])
        for name, (cfg, _) in candidates.items()
    }
    rule = {
        "shift": SHIFT,
        "sensitivity": SENSITIVITY,
        "max_auc_drop": MAX_AUC_DROP,
        "max_sensitivity_drop": MAX_SENSITIVITY_DROP,
    }
    result: dict = {"rule": rule, "outer_folds": {}}
    chosen_rows = []
    for k in range(n_folds):
        # the other folds' patches, each scored by the networks trained on another of them alone
        figures = {n: inner_figures(s[(s.outer_fold != k) & (s.trained_on_fold != k)]) for n, s in inner.items()}
        chosen = choose(figures)
        _print_choice(k, figures, chosen)
        result["outer_folds"][k] = {"chosen": chosen, "inner": figures}
        cfg, run_dir = candidates[chosen]
        chosen_rows.append(outer_fold(cfg, run_dir, patches, folds, k, n_folds))
    report = out_of_fold_report(pd.concat(chosen_rows, ignore_index=True))
    result["nested"] = {key: report[key] for key in REPORTED} | {"patch_only_roc_auc": report["patch_only_roc_auc"]}
    print("nested out-of-fold: " + ", ".join(f"{k} {v:.4f}" for k, v in result["nested"].items()))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
