"""From data folders to a verified bundle: train (Ray Train), calibrate, evaluate, export, hash."""

from __future__ import annotations

import io
import json
import logging
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import pandas as pd

from idcmap.atomic import atomic_path
from idcmap.errors import InputError
from idcmap.slide_tiling import KAGGLE_MPP, PATCH_SIZE

from . import data as datalib
from .architectures import CONTEXT_ARCHS, TRAINING, build, flops_per_patch
from .bundle import (
    KERAS_FILE,
    ONNX_FILE,
    ONNX_INT8_FILE,
    OOF_FILE,
    ModelBundle,
    load_bundle,
    write_manifest,
)
from .calibration import THRESHOLD_RULE, calibrate, fit_platt, nll, prior_offset
from .crossval import (
    BASELINE_WEIGHTS,
    CONTEXT_WEIGHTS,
    assign_folds,
    choose_baseline,
    choose_context_weight,
    context_logits,
    fit_calibration,
    out_of_fold_report,
)
from .metrics import average_precision, classification_metrics, roc_auc
from .scoring import (
    BASELINE_MIN_PATCHES,
    BASELINE_QUANTILE,
    CONTEXT_SELF_WEIGHT,
    calibrated_probability,
    idc_logit,
    mix_neighbours,
    scoring_function,
    sigmoid,
    with_context,
)
from .train import STATE_FILE, TrainConfig, class_balance, fit, latest_checkpoint, load_patches, prepare

log = logging.getLogger("idcmap")

#: int8 is offered only if its validation ROC AUC is within this of the fp32 ONNX model's
INT8_MAX_AUC_DROP = 0.005
INT8_CALIBRATION_PATCHES = 512


def code_version() -> str:
    """The installed idcmap version plus the git commit of the source tree, when there is one."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("idcmap")
    except PackageNotFoundError:
        v = "0.0.0+source"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except OSError:
        commit = ""
    return f"{v} ({commit})" if commit else v


def predict_batches(score_fn, images: np.ndarray, batch: int = 512) -> np.ndarray:
    """``score_fn`` (a scoring ``tf.function``) over ``images`` in batches, as numpy."""
    return np.concatenate([score_fn(images[i : i + batch]).numpy() for i in range(0, len(images), batch)])


def _onnx_probs(path, images: np.ndarray, batch: int = 512) -> np.ndarray:
    import onnxruntime as ort

    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    return np.concatenate([s.run(None, {name: images[i : i + batch]})[0] for i in range(0, len(images), batch)])


def _int8_backend(folder: Path, train, val, final, fp32_auc: float, seed: int) -> dict:
    """Quantize, then keep the int8 model only if it passes the AUC check on validation."""
    from .export import quantize_int8

    rng = np.random.default_rng(seed)
    calib = train.images[np.sort(rng.choice(len(train), min(INT8_CALIBRATION_PATCHES, len(train)), replace=False))]
    path = quantize_int8(folder / ONNX_FILE, folder / ONNX_INT8_FILE, calib)
    auc = roc_auc(val.labels, final(_onnx_probs(path, val.images)))
    spec = {
        "file": ONNX_INT8_FILE,
        "quantization": f"static int8 (QDQ, per-channel weights), calibrated on {len(calib)} training patches",
        "val_roc_auc": auc,
        "fp32_val_roc_auc": fp32_auc,
        "max_auc_drop": INT8_MAX_AUC_DROP,
    }
    if fp32_auc - auc > INT8_MAX_AUC_DROP:
        path.unlink()
        spec.update(
            offered=False,
            file=None,
            reason=f"int8 validation ROC AUC {auc:.4f} is more than {INT8_MAX_AUC_DROP} below fp32 {fp32_auc:.4f}",
        )
    else:
        spec["offered"] = True
    return spec


@dataclass
class Calibrated:
    """How a bundle turns its network's output into the final IDC probability and call, and the
    figures that back it: fitted on validation patients, or cross-fitted out of fold."""

    temperature: float
    offset: float
    threshold: float
    calibration: dict  # method, NLL before/after, what it was fitted on
    threshold_rule: str
    metrics_key: str  # "validation_metrics" or "out_of_fold_metrics"
    metrics: dict
    check: datalib.PatchSet  # patches the exported backends are checked on
    context_weight: float = CONTEXT_SELF_WEIGHT
    baseline: tuple[float, float] = (0.0, 0.0)  # weight and reference (calibrated scale) of the slide baseline


def calibrate_on_validation(model, cfg: TrainConfig, train, val) -> Calibrated:
    """Temperature and threshold fitted on the validation patients, metrics on them too."""
    val_probs = predict_batches(scoring_function(model, cfg.normalisation), val.images)
    offset = class_weight_offset(cfg, train)
    rows, cols, groups = val.grid
    cal = calibrate(
        val_probs, val.labels, offset, context=lambda z: mix_neighbours(z, rows, cols, groups, CONTEXT_SELF_WEIGHT)
    )
    prob = with_context(
        calibrated_probability(val_probs, cal["temperature"], offset), rows, cols, groups, CONTEXT_SELF_WEIGHT
    )
    metrics = classification_metrics(val.labels, prob, cal["threshold"])
    metrics["n_patients"] = len(cfg.split["validation"])
    patch_only = calibrated_probability(val_probs, cal["temperature"], offset)
    metrics["patch_only"] = {
        "roc_auc": roc_auc(val.labels, patch_only),
        "pr_auc": average_precision(val.labels, patch_only),
    }
    return Calibrated(
        cal["temperature"],
        offset,
        cal["threshold"],
        {k: cal[k] for k in ("method", "nll_before", "nll_after")} | {"fitted_on": "validation patients"},
        cal["threshold_rule"],
        "validation_metrics",
        metrics,
        val,
    )


def _export_backends(folder: Path, model, cfg: TrainConfig, train, cal: Calibrated) -> dict:
    """Save the Keras model, export ONNX (and int8 when it passes), each checked on ``cal.check``
    as scoring uses it; the manifest's ``backends``."""
    from .export import export_onnx

    check = cal.check
    score = scoring_function(model, cfg.normalisation)

    def final(probs):  # what scoring does: calibrate each patch, then neighbour context and slide baseline
        prob = calibrated_probability(probs, cal.temperature, cal.offset)
        return with_context(prob, *check.grid, cal.context_weight, cal.baseline)

    prob = final(predict_batches(score, check.images))
    model.save(folder / KERAS_FILE)
    export_onnx(score, folder / ONNX_FILE)
    onnx_prob = final(_onnx_probs(folder / ONNX_FILE, check.images))
    fp32_auc = roc_auc(check.labels, onnx_prob)
    return {
        "onnx": {
            "file": ONNX_FILE,
            "precision": "fp32",
            "offered": True,
            "max_abs_diff_vs_keras_on_check_set": float(np.abs(onnx_prob - prob).max()),
        },
        "keras": {"file": KERAS_FILE, "precision": "fp32", "offered": True},
        "onnx-int8": _int8_backend(folder, train, check, final, fp32_auc, cfg.seed),
    }


def _input_channels(arch: str) -> dict:
    if arch not in CONTEXT_ARCHS:
        return {"shape": [PATCH_SIZE, PATCH_SIZE, 3], "channels": "RGB"}
    cells = CONTEXT_ARCHS[arch]
    return {
        "shape": [PATCH_SIZE, PATCH_SIZE, 6],
        "channels": f"RGB of the patch, then RGB of the {cells}x{cells} grid cells around it (the slide's "
        f"tissue patches; white where there is none) averaged down to the patch's size",
        "neighbourhood_cells": cells,
    }


def _manifest(
    name: str, model, cfg: TrainConfig, train, cal: Calibrated, state: dict, fingerprint: str, backends: dict
) -> dict:
    return {
        "name": name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "code_version": code_version(),
        "architecture": {
            "name": cfg.arch,
            "width": cfg.width,
            "flops_per_patch": flops_per_patch(model),
            "params": int(model.count_params()),
            "output": "softmax (no IDC, IDC)",
        },
        "input": {
            **_input_channels(cfg.arch),
            "dtype": "uint8",
            "target_mpp": KAGGLE_MPP,
            "partial_patches": "padded with white (255) at right/bottom to 50x50",
        },
        "normalisation": cfg.normalisation,
        "calibration": cal.calibration | {"temperature": cal.temperature, "logit_offset": cal.offset},
        "context": {
            "self_weight": cal.context_weight,
            "rule": "final logit = self_weight x the patch's calibrated logit + (1 - self_weight) x "
            "the mean calibrated logit of its scored 8-connected grid neighbours (same "
            "slide); unchanged without neighbours",
            "baseline": {
                "weight": cal.baseline[0],
                "reference": cal.baseline[1],
                "quantile": BASELINE_QUANTILE,
                "min_patches": BASELINE_MIN_PATCHES,
                "rule": "then plus weight x (reference - the slide's quantile of those logits) where "
                "that is positive; unchanged on a slide of fewer than min_patches scored patches",
            },
        },
        "threshold": {"value": cal.threshold, "rule": cal.threshold_rule},
        "split": cfg.split,
        cal.metrics_key: cal.metrics,
        "training": {
            "data_fingerprint": fingerprint,
            "data_dirs": [str(d) for d in cfg.data_dirs],
            "n_train_patches": len(train),
            "n_validation_patches": len(cal.check) if cfg.split["validation"] else 0,
            "optimizer": {"name": "Adam", **TRAINING[cfg.arch]},
            "config": {k: v for k, v in asdict(cfg).items() if k not in NOT_IN_CONFIG},
            "best_epoch": state["best_epoch"] + 1,
            "epochs_run": state["epoch"] + 1,
            "history": state["history"],
            "restarted_after_epochs": state.get("restarts", []),  # worker groups restarted from a checkpoint
        },
        "backends": backends,
    }


def write_bundle(
    out_dir,
    model,
    cfg: TrainConfig,
    train,
    cal: Calibrated,
    state: dict,
    fingerprint: str,
    extra_files: dict[str, bytes] | None = None,
) -> ModelBundle:
    """Export, check the backends and write a verified bundle (``extra_files``: name -> bytes);
    an existing bundle folder is replaced only once the new one is complete."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, data in (extra_files or {}).items():
        (tmp / name).write_bytes(data)
    backends = _export_backends(tmp, model, cfg, train, cal)
    write_manifest(tmp, _manifest(out_dir.name, model, cfg, train, cal, state, fingerprint, backends))
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        out_dir.rename(old)
        tmp.rename(out_dir)
        shutil.rmtree(old)
    else:
        tmp.rename(out_dir)
    return load_bundle(out_dir)


def train_bundle(cfg: TrainConfig, out_dir, run_dir, resume: bool = False, ray_address=None) -> ModelBundle:
    """Train with Ray Train (or resume), then write the bundle from the best epoch's weights."""
    out_dir = Path(out_dir)
    train, val = prepare(cfg)
    last = latest_checkpoint(run_dir) if resume else None
    if resume and last is None:
        raise InputError(f"{Path(run_dir).resolve()}: no checkpoint to resume from (train without --resume)")
    ckpt = fit(cfg, run_dir, resume_from=last, ray_address=ray_address)
    state = json.loads((ckpt / STATE_FILE).read_text())
    if (state.get("arch"), state.get("width")) != (cfg.arch, cfg.width):
        raise InputError(
            f"{ckpt}: checkpoint is of {state.get('arch')} width {state.get('width')}, not {cfg.arch} width {cfg.width}"
        )
    model = build(cfg.arch, cfg.width)
    model.load_weights(ckpt / "best.weights.h5")
    return write_bundle(
        out_dir,
        model,
        cfg,
        train,
        calibrate_on_validation(model, cfg, train, val),
        state,
        datalib.fingerprint(cfg.data_dirs),
    )


# --- patient-level cross-validation -------------------------------------------------------------

FOLD_MODEL, FOLD_INFO, FOLD_OOF, FOLD_HISTORY = "model.keras", "fold.json", "oof.parquet", "history.json"
RECIPE_FILE, FOLDS_FILE = "recipe.json", "folds.json"
#: TrainConfig fields a bundle's training config leaves out: recorded apart, or the driver's for one run
NOT_IN_CONFIG = ("split", "normalisation", "resume_from", "start_marker", "data_dirs")
#: the options that decide what a cross-validation run computes (not how many workers or threads)
RECIPE_KEYS = (
    "arch",
    "width",
    "epochs",
    "global_batch_size",
    "imbalance",
    "colour_strength",
    "stain_strength",
    "artefact_strength",
    "consistency",
    "wide_stain",
    "label_smoothing",
    "robust_q",
    "patient_power",
    "ema",
    "weight_decay",
    "mixup",
    "stain_normalise",
    "seed",
    "limit_per_patient",
)


def check_recipe(cfg: TrainConfig, k: int, run_dir: Path) -> None:
    """Record in ``run_dir`` what its folds are trained with, or refuse a run with other options or
    data there: a re-run resumes the folds it finds, so they must be the same run's."""
    recipe = {"folds": k, "data_fingerprint": datalib.fingerprint(cfg.data_dirs)}
    recipe.update((key, getattr(cfg, key)) for key in RECIPE_KEYS)
    path = run_dir / RECIPE_FILE
    if not path.exists():
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(recipe, indent=1))
        return
    # an option added after the run was recorded: it was trained at the option's default
    stored = {f.name: f.default for f in fields(TrainConfig)} | json.loads(path.read_text())
    changed = [f"{key} {stored.get(key)!r} there, {v!r} here" for key, v in recipe.items() if stored.get(key) != v]
    if changed:
        raise InputError(
            f"{run_dir} holds a cross-validation run with other options or data ({'; '.join(changed)}): "
            "give the same options to resume it, or another --run-dir"
        )


def _fixed_epochs_config(cfg: TrainConfig, train_patients, rule: str, images: np.ndarray) -> TrainConfig:
    """``cfg`` for a run on ``train_patients`` with nothing held out (the last epoch is the model)."""
    return replace(
        cfg,
        split={"rule": rule, "train": sorted(train_patients), "validation": []},
        normalisation={
            "input": "RGB uint8, 50x50, white-padded partial patches",
            "formula": "(x - mean) / std per channel",
            **datalib.channel_stats(images),
        },
    )


def _fit_fixed(cfg: TrainConfig, run_dir: Path, ray_address, label: str) -> tuple:
    """Train (or finish) a fixed-epoch run in ``run_dir``; (model, state)."""
    ckpt = fit(cfg, run_dir, resume_from=latest_checkpoint(run_dir), ray_address=ray_address, label=label)
    model = build(cfg.arch, cfg.width)
    model.load_weights(ckpt / "best.weights.h5")
    return model, json.loads((ckpt / STATE_FILE).read_text())


def class_weight_offset(cfg: TrainConfig, train: datalib.PatchSet) -> float:
    """The logit shift the class weights of training on ``train`` put into a model."""
    return prior_offset(class_balance(cfg, train)[1]) if cfg.imbalance != "none" else 0.0


def on_training_scale(score_fn, train: datalib.PatchSet) -> tuple[float, float]:
    """(scale, offset) of Platt's fit to a network's logits (``score_fn``, its scoring function) of
    its own training patches, unaugmented: ``scale * (logit - offset)`` puts networks trained apart
    (each fold's, the final one) on one scale, so a temperature and threshold fitted on their pooled
    scores suit each of them."""
    return fit_platt(idc_logit(predict_batches(score_fn, train.images)), train.labels)


def _fold_model(fcfg: TrainConfig, fold_dir: Path, ray_address, label: str) -> tuple:
    """(model, state with its history) of a fold: trained, or the one an earlier run saved (its
    history is written after the model, so a history there means a whole model)."""
    if (fold_dir / FOLD_HISTORY).exists():
        import keras

        log.info("[train] %s: trained in an earlier run (%s)", label, fold_dir)
        model = keras.saving.load_model(fold_dir / FOLD_MODEL, compile=False)
        return model, {"history": json.loads((fold_dir / FOLD_HISTORY).read_text())}
    model, state = _fit_fixed(fcfg, fold_dir / "ray", ray_address, label)
    model.save(fold_dir / FOLD_MODEL)
    (fold_dir / FOLD_HISTORY).write_text(json.dumps(state["history"], indent=1))
    return model, state


def train_fold(cfg: TrainConfig, patches, folds: dict[str, int], fold: int, run_dir, ray_address=None) -> pd.DataFrame:
    """Train fold ``fold``'s model on the other folds' patients and score its own: its rows of the
    out-of-fold table. Kept in ``run_dir/fold-N/`` (model, info, scores), so a re-run resumes; a
    fold whose model was saved but not its scores is scored without training again."""
    fold_dir = Path(run_dir) / f"fold-{fold}"
    if (fold_dir / FOLD_OOF).exists():
        log.info("[train] fold-%d: done in an earlier run (%s)", fold, fold_dir)
        return pd.read_parquet(fold_dir / FOLD_OOF)
    k = max(folds.values()) + 1
    held_out = sorted(p for p, f in folds.items() if f == fold)
    train, test = datalib.apply_split(patches, {"train": sorted(set(folds) - set(held_out)), "validation": held_out})
    fcfg = _fixed_epochs_config(
        cfg,
        set(folds) - set(held_out),
        f"cross-validation fold {fold} of {k}: trained on the other folds' patients",
        train.images,
    )
    model, state = _fold_model(fcfg, fold_dir, ray_address, f"fold-{fold} ({fold + 1} of {k})")
    score = scoring_function(model, fcfg.normalisation)
    scale, offset = on_training_scale(score, train)
    logit = scale * (idc_logit(predict_batches(score, test.images)) - offset)
    (fold_dir / FOLD_INFO).write_text(
        json.dumps(
            {
                "fold": fold,
                "held_out": held_out,
                "trained_on": fcfg.split["train"],
                "logit_offset": offset,
                "logit_scale": scale,
                "stain_normalised": cfg.stain_normalise,
                "normalisation": fcfg.normalisation,
                "history": state["history"],
            },
            indent=1,
        )
    )
    oof = pd.DataFrame(
        {
            "patient_id": test.patient_ids,
            "source": [Path(s).name for s in test.sources],
            "x": test.xy[:, 0],
            "y": test.xy[:, 1],
            "label": test.labels.astype(np.int8),
            "fold": np.full(len(test), fold, np.int8),
            "logit": logit.astype(np.float32),
        }
    )
    with atomic_path(fold_dir / FOLD_OOF) as tmp:
        oof.to_parquet(tmp, index=False)
    return oof


def _run_folds(patches, k: int, run_dir: Path) -> dict[str, int]:
    """The run's patient -> fold: dealt on its first start and kept in ``run_dir``, where a resumed run
    finds it. Written there before the first start (a bundle's ``split.folds``), it makes the run
    use that bundle's folds, to compare with it patient by patient."""
    path = run_dir / FOLDS_FILE
    if path.exists():
        folds = {p: int(f) for p, f in json.loads(path.read_text()).items()}
        if set(folds) != set(patches.patient_ids.tolist()) or set(folds.values()) != set(range(k)):
            raise InputError(f"{path}: not a deal of this data's patients into {k} folds")
        return folds
    folds = assign_folds(patches.patient_ids, patches.sources, patches.labels, k)
    log.info("[train] %s: no earlier run there, a new %d-fold cross-validation starts", run_dir, k)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(folds, indent=0, sort_keys=True))
    return folds


def cross_validate(cfg: TrainConfig, k: int, run_dir, ray_address=None, patches=None) -> tuple[pd.DataFrame, dict]:
    """(out-of-fold table, patient -> fold) of a k-fold patient-level cross-validation."""
    check_recipe(cfg, k, Path(run_dir))
    if patches is None:
        patches = load_patches(cfg)
    folds = _run_folds(patches, k, Path(run_dir))
    oof = pd.concat([train_fold(cfg, patches, folds, f, run_dir, ray_address) for f in range(k)], ignore_index=True)
    return oof, folds


def _out_of_fold_calibrated(oof: pd.DataFrame, k: int, patches, scale: float, offset: float) -> Calibrated:
    """The bundle's calibration from all k folds' out-of-fold scores: context weight, slide
    baseline, temperature and threshold chosen on them, for a network whose logits ``scale * (logit
    - offset)`` are on its training patches' scale."""
    context_weight = choose_context_weight(oof)
    baseline = choose_baseline(oof, context_weight)
    z, y = context_logits(oof, context_weight, baseline), oof["label"].to_numpy()
    temperature, threshold = fit_calibration(z, y)
    calibration = {
        "method": "Platt's fit on the network's own training patches, then temperature scaling",
        "fitted_on": f"out-of-fold scores of the {k} fold models (all {oof['patient_id'].nunique()} patients), "
        "each on its own training patches' scale",
        "training_scale": {"scale": scale, "offset": offset},
        "context_self_weight": f"chosen among {list(CONTEXT_WEIGHTS)} by ROC AUC on the same scores",
        "baseline_weight": f"chosen among {list(BASELINE_WEIGHTS)} by ROC AUC on the same scores, after the "
        "context step; its reference the patch-weighted median baseline of the same patients",
        "nll_before": nll(sigmoid(z), y),
        "nll_after": nll(sigmoid(z / temperature), y),
    }
    return Calibrated(
        temperature / scale,  # sigmoid(scale (z - offset) / T) = sigmoid((z - offset) / (T / scale))
        offset,
        threshold,
        calibration,
        THRESHOLD_RULE.replace("the validation patients", "all out-of-fold scores"),
        "out_of_fold_metrics",
        out_of_fold_report(oof),
        patches,
        context_weight,
        (baseline[0], baseline[1] / temperature),  # on the calibrated scale scoring applies it on
    )


def folds_only_reason(cfg: TrainConfig) -> str | None:
    """Why ``cfg`` can be cross-validated but not shipped (scoring lacks a step it needs), or None."""
    if cfg.stain_normalise:
        return "scoring does not stain-normalise slides yet (--stain-normalise measures the folds only)"
    return None


def train_crossvalidated_bundle(cfg: TrainConfig, k: int, out_dir, run_dir, ray_address=None) -> ModelBundle:
    """The k fold models give the out-of-fold figures and the calibration (temperature and
    threshold fitted on all their out-of-fold scores); the bundle's network is then trained the
    same way on every patient. Every network's logits are first put on its own training patches'
    scale (:func:`on_training_scale`), so one temperature and threshold suit the fold models and
    the final network alike."""
    run_dir = Path(run_dir).resolve()
    patches = load_patches(cfg)
    oof, folds = cross_validate(cfg, k, run_dir, ray_address, patches)
    if why := folds_only_reason(cfg):
        raise InputError(f"{run_dir}: the {k} folds' out-of-fold scores are written; no bundle: {why}")
    fcfg = _fixed_epochs_config(
        cfg, set(folds), "every patient (cross-validated protocol, nothing held out)", patches.images
    )
    fcfg.split["folds"] = {p: int(f) for p, f in sorted(folds.items())}
    model, state = _fit_fixed(fcfg, run_dir / "final", ray_address, "all patients")
    scale, offset = on_training_scale(scoring_function(model, fcfg.normalisation), patches)
    cal = _out_of_fold_calibrated(oof, k, patches, scale, offset)
    buf = io.BytesIO()
    oof.to_parquet(buf, index=False)
    return write_bundle(
        out_dir,
        model,
        fcfg,
        patches,
        cal,
        state,
        datalib.fingerprint(cfg.data_dirs),
        extra_files={OOF_FILE: buf.getvalue()},
    )
