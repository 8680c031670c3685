"""Training throughput (patches/s) of the Ray Train job with 1 and 2 workers.

    python benchmarks/bench_train.py [--arch idcnet] [--per-patient 40] [--epochs 2]

Runs the real training loop (MultiWorkerMirroredStrategy, custom step, augmentation) on a subset
of ../shared/data and reports the last epoch's patches/s (the first one includes tracing).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "idc"


def main():
    import ray

    from idcmap.model.train import STATE_FILE, TrainConfig, fit, prepare

    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="idcnet")
    ap.add_argument("--per-patient", type=int, default=40)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    rows = []
    for workers in map(int, args.workers.split(",")):
        cfg = TrainConfig(
            data_dirs=[str(DATA / "patients"), str(DATA / "sparse")],
            arch=args.arch,
            epochs=args.epochs,
            num_workers=workers,
            cpus=2,
            patience=args.epochs,
            limit_per_patient=args.per_patient,
        )
        train, _ = prepare(cfg)
        with tempfile.TemporaryDirectory() as tmp:
            state = json.loads((fit(cfg, tmp) / STATE_FILE).read_text())
        last = state["history"][-1]
        rows.append(
            {
                "arch": args.arch,
                "workers": workers,
                "threads_per_worker": 2 // workers,
                "train_patches": len(train),
                "patches_per_s": round(last["patches_per_s"], 1),
                "epoch_s": round(last["epoch_s"], 1),
            }
        )
        print(
            f"{args.arch} {workers} worker(s): {last['patches_per_s']:.0f} patches/s "
            f"({len(train)} patches, {last['epoch_s']:.1f} s/epoch)",
            flush=True,
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
