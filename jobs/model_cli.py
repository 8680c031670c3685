"""``idcmap train`` and ``idcmap evaluate``: the model's commands."""
from __future__ import annotations

import json
import os
from pathlib import Path

import click

# TensorFlow's C++ start-up chatter (oneDNN, CPU features) is noise for CLI users
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

_DIR = click.Path(exists=True, file_okay=False, path_type=Path, resolve_path=True)


def _user_errors():
    """The exceptions that mean bad input, shown as one line without a stack trace."""
    from model import BundleError
    from model.data import DataError

    return (BundleError, DataError, FileNotFoundError, ValueError)


@click.command()
@click.option("--data", "data_dirs", type=_DIR, multiple=True, required=True,
              help="Kaggle IDC folder (patient folders, or one patient); repeat for several.")
@click.option("--arch", type=click.Choice(["idcnet", "seed_cnn"]), default="idcnet", show_default=True)
@click.option("--width", type=click.IntRange(8), default=None,
              help="idcnet channel width [default: 32].")
@click.option("--epochs", type=click.IntRange(1), default=20, show_default=True)
@click.option("--num-workers", type=click.IntRange(1), default=1, show_default=True,
              help="Ray Train workers (MultiWorkerMirroredStrategy replicas).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Bundle folder to write (replaced atomically when done).")
@click.option("--resume", is_flag=True, help="Continue from the last checkpoint in --run-dir.")
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Ray Train storage for checkpoints [default: runs/<bundle name>].")
@click.option("--batch-size", type=click.IntRange(2), default=64, show_default=True, help="Global batch size.")
@click.option("--patience", type=click.IntRange(1), default=4, show_default=True,
              help="Stop after this many epochs without a better validation ROC AUC.")
@click.option("--imbalance", type=click.Choice(["weights", "sampling", "none"]), default="weights",
              show_default=True, help="Class imbalance: class weights, balanced sampling or nothing.")
@click.option("--colour-strength", type=click.FloatRange(0), default=1.0, show_default=True,
              help="Scale of the colour/stain jitter augmentation.")
@click.option("--cpus", type=click.IntRange(1), default=2, show_default=True,
              help="CPU threads for training, shared by the workers.")
@click.option("--limit-per-patient", type=click.IntRange(1), default=None,
              help="Use at most N patches per patient (quick runs).")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep decoded patches here as .npz between runs.")
@click.option("--address", default=None, help="Ray cluster address [default: embedded local Ray].")
def train(data_dirs, arch, width, epochs, num_workers, out_dir, resume, run_dir, batch_size, patience,
          imbalance, colour_strength, cpus, limit_per_patient, cache_dir, address):
    """Train a model with Ray Train and write a verified model bundle."""
    from model.pipeline import train_bundle
    from model.train import TrainConfig

    if batch_size % num_workers:
        raise click.ClickException(f"--batch-size {batch_size} is not divisible by --num-workers {num_workers}")
    cfg = TrainConfig(data_dirs=[str(d) for d in data_dirs], arch=arch, width=width, epochs=epochs,
                      global_batch_size=batch_size, patience=patience, imbalance=imbalance,
                      colour_strength=colour_strength,
                      num_workers=num_workers, cpus=cpus, limit_per_patient=limit_per_patient,
                      cache_dir=str(cache_dir) if cache_dir else None)
    try:
        bundle = train_bundle(cfg, out_dir, run_dir or Path("runs") / out_dir.name, resume=resume,
                              ray_address=address)
    except _user_errors() as e:
        raise click.ClickException(str(e))
    m = bundle.meta["validation_metrics"]
    click.echo(f"wrote {bundle.path} ({bundle.version}): validation ROC AUC {m['roc_auc']:.4f}, "
               f"balanced accuracy {m['balanced_accuracy']:.4f} at threshold {bundle.threshold:.3f}, "
               f"backends {', '.join(bundle.backends)}")


@click.command()
@click.argument("bundle_dir", type=_DIR)
@click.argument("data_dirs", type=_DIR, nargs=-1, required=True)
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the full report (overall and per patient) here.")
@click.option("--plots", "plots_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write roc.png and reliability.png here.")
@click.option("--backend", type=click.Choice(["onnx", "keras", "onnx-int8"]), default="onnx", show_default=True)
@click.option("--threads", type=click.IntRange(1), default=None, help="Inference threads.")
@click.option("--validation-only", is_flag=True,
              help="Only the bundle's validation patients (held out from its training).")
def evaluate(bundle_dir, data_dirs, json_out, plots_dir, backend, threads, validation_only):
    """Evaluate a model bundle on Kaggle-layout folders at its stored threshold."""
    from model.evaluate import evaluate as run_evaluation

    try:
        report = run_evaluation(bundle_dir, list(data_dirs), backend=backend, threads=threads,
                                plots_dir=plots_dir, validation_only=validation_only)
    except _user_errors() as e:
        raise click.ClickException(str(e))
    fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
    click.echo(f"{report['model']} [{backend}] on {report['n_patches']} patches of "
               f"{report['n_patients']} patients, threshold {report['threshold']:.3f}")
    for key in ("roc_auc", "pr_auc", "balanced_accuracy", "sensitivity", "specificity", "precision",
                "f1", "accuracy", "ece"):
        click.echo(f"  {key:18s} {fmt(report[key])}")
    if "patch_only_roc_auc" in report:
        click.echo(f"  {'roc_auc patch only':18s} {fmt(report['patch_only_roc_auc'])}  (without the neighbour context)")
    cm = report["confusion_matrix"]
    click.echo(f"  confusion          tn {cm['tn']}  fp {cm['fp']}  fn {cm['fn']}  tp {cm['tp']}")
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report, indent=1))
        click.echo(f"wrote {json_out}")
    if plots_dir:
        click.echo(f"wrote {', '.join(report['plots'].values())}")
