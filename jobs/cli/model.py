"""``idcmap train`` and ``idcmap evaluate``: the model's commands."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from idcmap.model.architectures import ARCHITECTURES
from idcmap.model.backends import BACKENDS

# TensorFlow's C++ start-up chatter (oneDNN, CPU features) is noise for CLI users
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

_DIR = click.Path(exists=True, file_okay=False, path_type=Path, resolve_path=True)


def train_setup(data_dirs, out_dir, run_dir, cache_dir, **options):
    """(TrainConfig, run folder) of `idcmap train`'s options; the options not named here are
    TrainConfig's fields by name."""
    from idcmap.model.train import TrainConfig

    cfg = TrainConfig(data_dirs=[str(d) for d in data_dirs], cache_dir=str(cache_dir) if cache_dir else None, **options)
    return cfg, run_dir or (Path("runs") / out_dir.name if out_dir else None)


@click.command()
@click.option(
    "--data",
    "data_dirs",
    type=_DIR,
    multiple=True,
    required=True,
    help="Kaggle IDC folder (patient folders, or one patient); repeat for several.",
)
@click.option("--arch", type=click.Choice(sorted(ARCHITECTURES)), default="idcnet", show_default=True)
@click.option("--width", type=click.IntRange(8), default=None, help="idcnet channel width [default: 32].")
@click.option(
    "--epochs",
    type=click.IntRange(1),
    default=6,
    show_default=True,
    help="Epochs of every run (cosine learning-rate decay over them for idcnet).",
)
@click.option(
    "--num-workers",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Ray Train workers (MultiWorkerMirroredStrategy replicas).",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Bundle folder to write (replaced atomically when done); needed unless --folds-only with --run-dir.",
)
@click.option(
    "--resume",
    is_flag=True,
    help="With --folds 0: continue from the last checkpoint in --run-dir (cross-validated runs resume by themselves).",
)
@click.option(
    "--run-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Ray Train storage for checkpoints [default: runs/<bundle name>].",
)
@click.option(
    "--batch-size",
    "global_batch_size",
    type=click.IntRange(2),
    default=64,
    show_default=True,
    help="Global batch size.",
)
@click.option(
    "--patience",
    type=click.IntRange(1),
    default=4,
    show_default=True,
    help="With --folds 0: stop after this many epochs without a better validation ROC AUC.",
)
@click.option(
    "--imbalance",
    type=click.Choice(["weights", "sampling", "none"]),
    default="weights",
    show_default=True,
    help="Class imbalance: class weights, balanced sampling or nothing.",
)
@click.option(
    "--colour-strength",
    type=click.FloatRange(0),
    default=1.0,
    show_default=True,
    help="Scale of the colour jitter augmentation.",
)
@click.option(
    "--stain-strength",
    type=click.FloatRange(0),
    default=1.0,
    show_default=True,
    help="Scale of the stain-space (HED) jitter and gamma augmentation; 0 turns it off.",
)
@click.option(
    "--artefact-strength",
    type=click.FloatRange(0),
    default=0.0,
    show_default=True,
    help="Scale of the blur and JPEG-compression augmentation; 0 turns it off.",
)
@click.option(
    "--consistency",
    type=click.FloatRange(0),
    default=0.0,
    show_default=True,
    help="Train on two augmented views of each patch and add this weight times the Jensen-Shannon "
    "divergence of their predictions to the loss (each step then costs twice); 0 turns it off.",
)
@click.option(
    "--wide-stain",
    type=click.FloatRange(0),
    default=0.0,
    show_default=True,
    help="With --consistency: give the second view this stain strength instead, train it only to agree "
    "with the first view's prediction (held fixed) and the cross-entropy on the first view alone; "
    "0: two views alike.",
)
@click.option(
    "--label-smoothing",
    type=click.FloatRange(0, 0.5, max_open=True),
    default=0.0,
    show_default=True,
    help="Train towards 1 - S/2 and S/2 instead of 1 and 0 (the labels are coarse region outlines); 0 turns it off.",
)
@click.option(
    "--robust-q",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Generalised cross-entropy (1 - p^Q) / Q instead of cross-entropy: wrong labels weigh less "
    "(Q = 0.7 in Zhang & Sabuncu 2018); 0 turns it off.",
)
@click.option(
    "--patient-power",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Weigh each training patch by its patient's patch count to the power -P: 0 weighs patches "
    "alike, 1 patients alike (a few-patch patient as much as a whole slide).",
)
@click.option(
    "--ema",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.0,
    show_default=True,
    help="Keep a moving average of the weights with this momentum (0.999: about the last 1000 steps) "
    "and validate and save it as the model; 0 turns it off.",
)
@click.option(
    "--weight-decay",
    type=click.FloatRange(0),
    default=0.0,
    show_default=True,
    help="AdamW's decoupled weight decay instead of Adam; 0 turns it off.",
)
@click.option(
    "--mixup",
    type=click.FloatRange(0),
    default=0.0,
    show_default=True,
    help="Mixup: blend each training patch, and its label, with another patch of the batch by a "
    "share drawn from Beta(A, A); 0 turns it off.",
)
@click.option(
    "--stain-normalise",
    is_flag=True,
    help="Macenko-normalise each patient's patches before training (implies --folds-only: "
    "scoring does not normalise yet, so no bundle is written).",
)
@click.option(
    "--folds-only",
    is_flag=True,
    help="Stop after the cross-validation folds: their out-of-fold scores in --run-dir and figures "
    "printed, no network on every patient and no bundle (for comparing training protocols).",
)
@click.option(
    "--folds",
    type=click.IntRange(0),
    default=3,
    show_default=True,
    help="Patient-level cross-validation folds: out-of-fold figures and calibration, then the "
    "bundle trained on every patient for --epochs. 0: one validation split instead "
    "(early stopping, calibration and figures on it).",
)
@click.option(
    "--cpus",
    type=click.IntRange(1),
    default=2,
    show_default=True,
    help="CPU threads for training, shared by the workers.",
)
@click.option(
    "--limit-per-patient", type=click.IntRange(1), default=None, help="Use at most N patches per patient (quick runs)."
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Keep decoded patches here as .npz between runs.",
)
@click.option("--address", default=None, help="Ray cluster address [default: embedded local Ray].")
def train(data_dirs, out_dir, resume, run_dir, folds, folds_only, cache_dir, address, **options):
    """Train a model with Ray Train and write a verified model bundle."""
    from idcmap.model.make_bundle import folds_only_reason, train_bundle, train_crossvalidated_bundle

    cfg, run_dir = train_setup(data_dirs, out_dir, run_dir, cache_dir, **options)
    folds_only = folds_only or folds_only_reason(cfg) is not None
    if out_dir is None and not (folds_only and run_dir):
        raise click.UsageError("give --out (or, with --folds-only, --run-dir)")
    if cfg.global_batch_size % cfg.num_workers:
        raise click.ClickException(
            f"--batch-size {cfg.global_batch_size} is not divisible by --num-workers {cfg.num_workers}"
        )
    if folds == 1:
        raise click.ClickException("--folds must be 0 (one validation split) or at least 2")
    if folds_only and not folds:
        why = folds_only_reason(cfg) or "--folds-only measures cross-validation folds only"
        raise click.ClickException(f"{why}: give --folds >= 2")
    if folds_only:
        _cross_validate_only(cfg, folds, run_dir, address)
        return
    if folds:  # a run resumes by itself: every fold and the final model keep their checkpoints
        bundle = train_crossvalidated_bundle(cfg, folds, out_dir, run_dir, ray_address=address)
    else:
        bundle = train_bundle(cfg, out_dir, run_dir, resume=resume, ray_address=address)
    kind, m = bundle.metrics
    click.echo(
        f"wrote {bundle.path} ({bundle.version}): {kind} ROC AUC {m['roc_auc']:.4f}, "
        f"balanced accuracy {m['balanced_accuracy']:.4f}, ECE {m['ece']:.4f}; threshold "
        f"{bundle.threshold:.3f}, backends {', '.join(bundle.backends)}"
    )


def _cross_validate_only(cfg, folds: int, run_dir: Path, address) -> None:
    """``train --folds-only``: the folds (resumed where done), their out-of-fold figures printed."""
    from idcmap.model.crossval import out_of_fold_report
    from idcmap.model.make_bundle import cross_validate

    oof, _ = cross_validate(cfg, folds, run_dir.resolve(), ray_address=address)
    report = out_of_fold_report(oof)
    _print_report(dict(report, model=str(run_dir), backend="fold networks"), out_of_fold=True)
    click.echo(f"the {folds} folds' networks and out-of-fold scores are under {run_dir}; no bundle (--folds-only)")


@click.command()
@click.argument("bundle_dir", type=_DIR)
@click.argument("data_dirs", type=_DIR, nargs=-1)
@click.option(
    "--json",
    "json_out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the full report (overall and per patient) here.",
)
@click.option(
    "--plots",
    "plots_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write roc.png and reliability.png here.",
)
@click.option("--backend", type=click.Choice(BACKENDS), default="onnx", show_default=True)
@click.option("--threads", type=click.IntRange(1), default=None, help="Inference threads.")
@click.option(
    "--validation-only", is_flag=True, help="Only the bundle's validation patients (held out from its training)."
)
@click.option(
    "--out-of-fold",
    "out_of_fold",
    is_flag=True,
    help="The bundle's out-of-fold figures, from the fold predictions it stores (no DATA_DIR).",
)
def evaluate(bundle_dir, data_dirs, json_out, plots_dir, backend, threads, validation_only, out_of_fold):
    """Evaluate a model bundle on Kaggle-layout folders at its stored threshold, or report its
    out-of-fold figures (--out-of-fold)."""
    from idcmap.model.evaluate import evaluate as run_evaluation
    from idcmap.model.evaluate import evaluate_out_of_fold

    if out_of_fold == bool(data_dirs):
        raise click.UsageError("give DATA_DIR... to evaluate on, or --out-of-fold without any")
    if out_of_fold:
        report = evaluate_out_of_fold(bundle_dir, plots_dir=plots_dir)
    else:
        report = run_evaluation(
            bundle_dir,
            list(data_dirs),
            backend=backend,
            threads=threads,
            plots_dir=plots_dir,
            validation_only=validation_only,
        )
    _print_report(report, out_of_fold)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report, indent=1))
        click.echo(f"wrote {json_out}")
    if plots_dir:
        click.echo(f"wrote {', '.join(report['plots'].values())}")


METRIC_KEYS = (
    "roc_auc",
    "pr_auc",
    "balanced_accuracy",
    "sensitivity",
    "specificity",
    "precision",
    "f1",
    "accuracy",
    "ece",
)


def _print_report(report: dict, out_of_fold: bool) -> None:
    fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
    at = (
        f"threshold {report['threshold']:.3f}"
        if report["threshold"] is not None
        else f"out of fold: {report['n_folds']} folds, each calibrated on the others"
    )
    click.echo(
        f"{report['model']} [{report['backend']}] on {report['n_patches']} patches of "
        f"{report['n_patients']} patients, {at}"
    )
    for key in METRIC_KEYS:
        click.echo(f"  {key:18s} {fmt(report[key])}")
    if "patch_only_roc_auc" in report:
        click.echo(f"  {'roc_auc patch only':18s} {fmt(report['patch_only_roc_auc'])}  (the patch alone)")
    cm = report["confusion_matrix"]
    click.echo(f"  confusion          tn {cm['tn']}  fp {cm['fp']}  fn {cm['fn']}  tp {cm['tp']}")
    for kind, r in report.get("by_neighbours", {}).items():
        click.echo(
            f"  {kind.replace('_', ' ')} ({r['n_patches']} patches): roc_auc {fmt(r['roc_auc'])}, "
            f"balanced_accuracy {fmt(r['balanced_accuracy'])}, ece {fmt(r['ece'])}"
        )
    if out_of_fold:
        ci, sp = report["intervals_95"], report["per_patient_spread"]
        click.echo(
            "  95 % intervals (bootstrap over patients): "
            + ", ".join(f"{k} {lo:.4f}-{hi:.4f}" for k, (lo, hi) in ci.items())
        )
        click.echo(
            f"  per patient ({sp['n_patients']} patients with {sp['rule']}): "
            + ", ".join(
                f"{k} median {v['median']:.3f}, worst tenth {v['worst_tenth']:.3f}"
                for k, v in sp.items()
                if isinstance(v, dict)
            )
        )
