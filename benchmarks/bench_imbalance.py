"""Class-imbalance handling chosen by measurement: class weights vs balanced sampling vs nothing.

    python benchmarks/bench_imbalance.py [--per-patient 150] [--epochs 5]

Trains idcnet the same way for each mode on a per-patient subset of ../shared/data and reports the
best validation ROC AUC and the balanced accuracy at the calibrated threshold chosen by the bundle's
rule. The split is the split rule applied to the subset, not the shipped bundles' split, and the
epoch, temperature and threshold are chosen on the validation patients it reports on: in-sample
figures, for comparing the three modes with each other only.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "idc"


def main():
    import ray
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    from idcmap.model.architectures import build
    from idcmap.model.calibration import calibrate, prior_offset
    from idcmap.model.data import class_weights
    from idcmap.model.metrics import expected_calibration_error
    from idcmap.model.scoring import calibrated_probability, scoring_function
    from idcmap.model.train import STATE_FILE, TrainConfig, fit, prepare

    ap = argparse.ArgumentParser()
    ap.add_argument("--per-patient", type=int, default=150)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    rows = []
    for mode in ("weights", "sampling", "none"):
        cfg = TrainConfig(
            data_dirs=[str(DATA / "patients"), str(DATA / "sparse")],
            arch="idcnet",
            epochs=args.epochs,
            patience=args.epochs,
            imbalance=mode,
            limit_per_patient=args.per_patient,
        )
        train, val = prepare(cfg)
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = fit(cfg, tmp)
            state = json.loads((ckpt / STATE_FILE).read_text())
            model = build(cfg.arch)
            model.load_weights(ckpt / "best.weights.h5")
        score = scoring_function(model, cfg.normalisation)
        probs = np.concatenate([score(val.images[i : i + 512]).numpy() for i in range(0, len(val), 512)])
        offset = prior_offset(class_weights(train.labels)) if mode != "none" else 0.0
        cal = calibrate(probs, val.labels, offset)
        p = calibrated_probability(probs, cal["temperature"], offset)
        rows.append(
            {
                "imbalance": mode,
                "train_patches": len(train),
                "val_patches": len(val),
                "best_epoch": state["best_epoch"] + 1,
                "val_roc_auc": round(roc_auc_score(val.labels, p), 4),
                "balanced_accuracy": round(balanced_accuracy_score(val.labels, p >= cal["threshold"]), 4),
                "ece": round(expected_calibration_error(p, val.labels), 4),
            }
        )
        print(rows[-1], flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
