"""What the out-of-fold scores predict for a patient set made like issue 12's kept-back one.

    python benchmarks/keptback_composition.py BUNDLE_OR_RUN_DIR [--whole 8] [--sparse 123] [--json OUT]

The pooled out-of-fold figures weigh the 24 whole patients' 22,907 patches against the 123 sparse
patients' 4,001: 85 % of the patches, and the neighbour-context and slide-baseline steps act on
them. The kept-back evaluation of issue 12 pooled 8 whole and 123 sparse patients (13,314 patches),
so sparse patients, whose isolated patches those steps hardly touch, weigh two to three times as
much there. This draws many sets of that make-up from our own patients (``--whole`` of the whole
patients and ``--sparse`` of the sparse ones, with replacement; each patient's out-of-fold scores,
cross-fitted as the bundle's figures are) and reports the pooled figures' median, 95 % range and the
share of sets that meet each kept-back floor. It assumes the kept-back patients are like ours,
which the issue says they are not (new stains), so read it as the best case: a floor missed here
is likely missed there. Each folder's own figures, patch alone and after the steps, show where the
difference comes from.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from bench_ensemble import out_of_fold

from idcmap.model.crossval import cross_fitted, resampled_figures
from idcmap.model.metrics import classification_metrics, roc_auc

#: issue 12's floors on the kept-back patients: (figure, bound, True when the figure must be at least it)
FLOORS = (("roc_auc", 0.935, True), ("balanced_accuracy", 0.85, True), ("ece", 0.06, False))
#: no whole patient below this balanced accuracy (issue 12)
WHOLE_PATIENT_BA = 0.65
DRAWS = 2000


def composed_resamples(
    patient_ids: np.ndarray, strata: dict[str, tuple[list[str], int]], n: int = DRAWS, seed: int = 0
) -> Iterator[tuple[np.ndarray, list[str]]]:
    """``n`` sets each made of ``count`` patients drawn with replacement from each stratum's
    ``patients``: (per-patch weight, a patient drawn k times weighing k; the patients drawn)."""
    ids, index = np.unique(patient_ids, return_inverse=True)
    position = {str(p): i for i, p in enumerate(ids)}
    rng = np.random.default_rng(seed)
    for _ in range(n):
        drawn = [str(p) for patients, count in strata.values() for p in rng.choice(patients, count)]
        times = np.bincount([position[p] for p in drawn], minlength=len(ids))
        yield times[index].astype(np.float64), drawn


def print_folders(oof, prob: np.ndarray, thr: np.ndarray) -> None:
    """All patients', the whole ones' and the sparse ones' pooled figures, patch alone and after the steps."""
    y, patients, source = oof.label.to_numpy(), oof.patient_id.to_numpy(), oof.source.to_numpy()
    print("| patients | patches | ROC AUC, patch alone | ROC AUC | balanced acc. | sensitivity | specificity | ECE |")
    print("|---|---|---|---|---|---|---|---|")
    for name, m in (("all", np.ones(len(y), bool)), ("whole", source == "patients"), ("sparse", source == "sparse")):
        r = classification_metrics(y[m], prob[m], thr[m])
        print(
            f"| {name} ({len(set(patients[m]))}) | {m.sum()} | {roc_auc(y[m], oof.logit.to_numpy()[m]):.4f} | "
            f"{r['roc_auc']:.4f} | {r['balanced_accuracy']:.3f} | {r['sensitivity']:.3f} | {r['specificity']:.3f} "
            f"| {r['ece']:.3f} |"
        )


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", type=Path, help="a cross-validated bundle, or its training run (--run-dir)")
    ap.add_argument("--whole", type=int, default=8, help="whole patients in a set (kept back: 8)")
    ap.add_argument("--sparse", type=int, default=123, help="sparse patients in a set (kept back: 123)")
    ap.add_argument("--draws", type=int, default=DRAWS)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    oof = out_of_fold(args.source)
    prob, thr, _ = cross_fitted(oof)
    y, patients, source = oof.label.to_numpy(), oof.patient_id.to_numpy(), oof.source.to_numpy()
    print_folders(oof, prob, thr)

    whole, sparse = (sorted(set(patients[source == s])) for s in ("patients", "sparse"))
    whole_ba = {
        p: classification_metrics(y[m], prob[m], thr[m])["balanced_accuracy"] for p in whole for m in [patients == p]
    }
    strata = {"whole": (whole, args.whole), "sparse": (sparse, args.sparse)}
    weights, lowest = [], []
    for w, drawn in composed_resamples(patients, strata, args.draws):
        weights.append(w)
        lowest.append(min((whole_ba[p] for p in drawn if p in whole_ba), default=np.nan))
    samples = resampled_figures(y, prob, thr, weights)
    share_sparse = np.median([w[source == "sparse"].sum() / w.sum() for w in weights])
    print(
        f"\n{args.draws} sets of {args.whole} whole + {args.sparse} sparse patients "
        f"(median {np.median([w.sum() for w in weights]):.0f} patches, {share_sparse:.0%} of them sparse):\n"
    )
    print("| figure | median | 95 % range | kept-back floor | sets meeting it |")
    print("|---|---|---|---|---|")
    out = {"sets": args.draws, "whole": args.whole, "sparse": args.sparse, "figures": {}}
    for key, bound, at_least in FLOORS:
        v = np.array(samples[key])
        met = float(np.mean(v >= bound if at_least else v <= bound))
        lo, med, hi = np.percentile(v, [2.5, 50, 97.5])
        out["figures"][key] = {"median": med, "range_95": [lo, hi], "floor": bound, "share_meeting": met}
        print(f"| {key} | {med:.3f} | {lo:.3f}-{hi:.3f} | {'>=' if at_least else '<='} {bound} | {met:.0%} |")
    for key in ("sensitivity", "specificity"):
        lo, med, hi = np.percentile(samples[key], [2.5, 50, 97.5])
        out["figures"][key] = {"median": med, "range_95": [lo, hi]}
        print(f"| {key} | {med:.3f} | {lo:.3f}-{hi:.3f} | | |")
    if args.whole:
        met = float(np.mean(np.array(lowest) >= WHOLE_PATIENT_BA))
        out["whole_patients_ba_at_least"] = {"bound": WHOLE_PATIENT_BA, "share_meeting": met}
        median = np.median(lowest)
        print(f"| lowest whole patient's balanced acc. | {median:.3f} | | >= {WHOLE_PATIENT_BA} | {met:.0%} |")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
