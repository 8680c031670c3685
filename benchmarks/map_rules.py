"""Would another map rule make better out-of-fold maps? Each rule family chosen inside the folds.

    python benchmarks/map_rules.py BUNDLE_OR_RUN_DIR [--json OUT]

The shipped map calls a patch IDC at the bundle's threshold when it lies in an 8-connected group of
at least the minimum IDC area (0.2 mm², five patches; ``oof_maps.py``). This tries three families
of other rules on the 24 whole patients' out-of-fold maps:

- ``smooth``: the logits Gaussian-smoothed over the tissue (sigma in patches) before the threshold;
- ``offset``: the map's threshold moved by a logit offset (the patch threshold is chosen for
  balanced accuracy, Dice weighs false positives differently);
- ``area``: the minimum region area;
- ``seed``: hysteresis: a region called at the threshold is kept only if its highest score reaches
  the threshold moved up by a logit offset (a faint blob goes, the whole extent of a strong one
  stays);
- ``peak``: the slide's own strongest evidence sets a floor: its map threshold is raised to
  ``d`` logits below the 98th percentile of its tissue probabilities (never lowered; slides of
  fewer than 10 tissue patches keep the threshold), so a slide with a strong tumour loses its
  faint blobs and a pale slide, whose tumour is its top, keeps it;
- ``prior``: the slide's own IDC prevalence estimated by EM on its probabilities (Saerens et al.
  2002; starting from the mean probability ``pi0`` of the other folds' patches), and its logits
  moved by ``lam`` times the log-odds of that prevalence against ``pi0`` (a slide with little IDC
  is pulled down, a mostly-IDC one up; fewer than 10 tissue patches: unchanged);
- ``edice``: the slide's map is the set of its patches that maximises the Dice its calibrated
  probabilities expect, 2 x (the sum of the called patches' probabilities) / (the called patches +
  the sum of all its probabilities): its highest-scoring patches down to the count that maximises
  that (the plug-in rule for F1 of Jansche 2007 and Nan et al. 2012; no parameter; fewer than 10
  tissue patches: the threshold).

Choosing a rule by the Dice of the same patients flatters it, so each fold's rule is the one with
the best mean Dice on the *other* folds' whole patients, and the figures reported (mean, median,
the three patients with least IDC, and each patient) are those of the rules so chosen.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
from bench_ensemble import out_of_fold
from oof_maps import dice, min_patches, patient_maps

from idcmap.jobs.render.summaries import idc_mask
from idcmap.model.crossval import cross_fitted, patient_resamples
from idcmap.model.scoring import logit, sigmoid

SHIPPED = {"sigma": 0.0, "offset": 0.0, "area": 0.2, "seed": 0.0, "peak": np.inf, "prior": 0.0, "edice": 0}
#: slides with fewer tissue patches keep their map under the per-slide rules (``peak``, ``prior``, ``edice``)
MIN_SLIDE_PATCHES = 10
FAMILIES = {
    "smooth": [{"sigma": s} for s in (0.0, 0.5, 1.0, 1.5, 2.0)],
    "offset": [{"offset": d} for d in (-0.5, -0.25, 0.0, 0.25, 0.5, 0.75, 1.0)],
    "area": [{"area": a} for a in (0.0, 0.2, 0.4, 0.8)],
    "seed": [{"seed": d} for d in (0.0, 0.5, 1.0, 1.5, 2.0, 3.0)],
    "peak": [{"peak": d} for d in (np.inf, 3.0, 2.5, 2.0, 1.5, 1.0)],
    "prior": [{"prior": lam} for lam in (0.0, 0.25, 0.5, 0.75, 1.0)],
    "edice": [{"edice": on} for on in (0, 1)],
}


def em_prevalence(prob: np.ndarray, pi0: float, iterations: int = 100) -> float:
    """The prevalence of a set of probabilities calibrated at prevalence ``pi0`` that makes them
    self-consistent (EM: the mean of the posteriors re-weighted to the estimate)."""
    pi = pi0
    for _ in range(iterations):
        a = prob * pi / pi0
        pi = float(np.mean(a / (a + (1 - prob) * (1 - pi) / (1 - pi0))))
    return pi


def expected_dice_threshold(prob: np.ndarray) -> float:
    """The probability at and above which calling patches maximises the Dice that the (calibrated)
    probabilities ``prob`` expect: 2 sum(called) / (n called + sum(all))."""
    top = np.sort(prob)[::-1]
    k = np.arange(1, len(top) + 1)
    return float(top[np.argmax(2 * np.cumsum(top) / (k + top.sum()))])


def calls(
    grid: np.ndarray,
    threshold: float,
    sigma: float,
    offset: float,
    area: float,
    seed: float,
    peak: float,
    prior: float,
    edice: int,
    pi0: float,
) -> np.ndarray:
    """The map's IDC calls under one rule (``grid``: probabilities, NaN off tissue)."""
    tissue = ~np.isnan(grid)
    z = np.where(tissue, logit(np.nan_to_num(grid)), 0.0).astype(np.float32)
    if prior and tissue.sum() >= MIN_SLIDE_PATCHES:
        z[tissue] += prior * (logit(em_prevalence(grid[tissue], pi0)) - logit(pi0))
    if sigma:  # a weighted mean over tissue only: the background neither dilutes nor adds
        weight = cv2.GaussianBlur(tissue.astype(np.float32), (0, 0), sigma)
        z = cv2.GaussianBlur(z, (0, 0), sigma) / np.maximum(weight, 1e-6)
    prob = np.where(tissue, sigmoid(z), np.nan)
    threshold = float(sigmoid(logit(threshold) + offset))
    if np.isfinite(peak) and tissue.sum() >= MIN_SLIDE_PATCHES:
        threshold = max(threshold, float(sigmoid(logit(np.percentile(prob[tissue], 98)) - peak)))
    if edice and tissue.sum() >= MIN_SLIDE_PATCHES:
        threshold = expected_dice_threshold(prob[tissue])
    mask = idc_mask(prob, threshold, min_patches(area))
    if seed and mask.any():  # keep the regions whose peak reaches the raised threshold
        n, regions = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
        peak = np.zeros(n)
        np.maximum.at(peak, regions[mask], prob[mask])
        mask &= peak[regions] >= sigmoid(logit(threshold) + seed)
    return mask


def nested(dices: list[dict[str, float]], folds: dict[str, int]) -> tuple[dict[str, float], list[int]]:
    """Each fold's patients scored under the rule (index into ``dices``) with the best mean Dice on
    the other folds' patients; ties to the first rule."""
    out, chosen = {}, []
    for f in sorted(set(folds.values())):
        others = [p for p in folds if folds[p] != f]
        best = max(range(len(dices)), key=lambda i: (np.mean([dices[i][p] for p in others]), -i))
        chosen.append(best)
        out.update({p: dices[best][p] for p in folds if folds[p] == f})
    return out, chosen


def summary(d: dict[str, float], least: list[str], base: dict[str, float]) -> str:
    """Mean, median and least-IDC Dice, and the change in mean Dice from ``base`` with its 95 %
    interval over resamplings of the patients."""
    v = np.array(list(d.values()))
    change = v - np.array([base[p] for p in d])
    lo, hi = np.percentile([w @ change / w.sum() for w in patient_resamples(list(d))], [2.5, 97.5])
    least_mean = np.mean([d[p] for p in least])
    return f"{v.mean():.3f} | {np.median(v):.3f} | {least_mean:.3f} | {change.mean():+.3f} ({lo:+.3f} to {hi:+.3f})"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", type=Path, help="a cross-validated bundle, or its training run (--run-dir)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    oof = out_of_fold(args.source)
    prob, thr, _ = cross_fitted(oof)
    maps = patient_maps(oof, prob, thr)
    pi0 = {f: float(prob[(oof.fold != f).to_numpy()].mean()) for f in oof.fold.unique()}
    share = {p: lab[~np.isnan(g)].mean() for p, (g, lab, _, _) in maps.items()}
    order = sorted(share, key=share.__getitem__)  # least IDC first
    least = order[:3]
    folds = {p: m[3] for p, m in maps.items()}

    def dices(rule: dict) -> dict[str, float]:
        return {p: dice(calls(g, t, **{**SHIPPED, **rule}, pi0=pi0[f]), lab) for p, (g, lab, t, f) in maps.items()}

    base = dices({})
    results = {"shipped": base}
    print("| rule | chosen per fold | mean Dice | median | least-IDC three | change in mean, 95 % over patients |")
    print("|---|---|---|---|---|---|")
    print(f"| shipped ({SHIPPED}) | - | {summary(base, least, base)} |")
    for name, family in FAMILIES.items():
        per_rule = [dices(rule) for rule in family]
        results[name], chosen = nested(per_rule, folds)
        picks = ", ".join(f"{next(iter(family[i].values())):g}" for i in chosen)
        print(f"| {name}, chosen inside the folds | {picks} | {summary(results[name], least, base)} |")
        for rule, d in zip(family, per_rule):
            print(f"| {name} {rule} (in-sample) | - | {summary(d, least, base)} |")
    print("\n| patient | IDC share | " + " | ".join(results) + " |\n|---|---|" + "---|" * len(results))
    for p in order:
        print(f"| {p} | {share[p]:.1%} | " + " | ".join(f"{r[p]:.3f}" for r in results.values()) + " |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
