"""From data folders to a verified bundle: train (Ray Train), calibrate, evaluate, export, hash."""
from __future__ import annotations

import json
import shutil
import subprocess
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from slide_tiling import KAGGLE_MPP, PATCH_SIZE

from . import data as datalib
from .architectures import TRAINING, build, flops_per_patch
from .bundle import KERAS_FILE, ONNX_FILE, ONNX_INT8_FILE, ModelBundle, load_bundle, write_manifest
from .calibration import calibrate, prior_offset
from .metrics import classification_metrics
from .scoring import CONTEXT_SELF_WEIGHT, calibrated_probability, mix_neighbours, scoring_function, with_context
from .train import STATE_FILE, TrainConfig, fit, prepare

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
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
                                capture_output=True, text=True, timeout=10).stdout.strip()
    except OSError:
        commit = ""
    return f"{v} ({commit})" if commit else v


def _predict(score_fn, images: np.ndarray, batch: int = 512) -> np.ndarray:
    return np.concatenate([score_fn(images[i:i + batch]).numpy() for i in range(0, len(images), batch)])


def _onnx_probs(path, images: np.ndarray, batch: int = 512) -> np.ndarray:
    import onnxruntime as ort

    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    return np.concatenate([s.run(None, {name: images[i:i + batch]})[0] for i in range(0, len(images), batch)])


def _int8_backend(folder: Path, train, val, final, fp32_auc: float, seed: int) -> dict:
    """Quantize, then keep the int8 model only if it passes the AUC check on validation."""
    from sklearn.metrics import roc_auc_score

    from .export import quantize_int8

    rng = np.random.default_rng(seed)
    calib = train.images[np.sort(rng.choice(len(train), min(INT8_CALIBRATION_PATCHES, len(train)), replace=False))]
    path = quantize_int8(folder / ONNX_FILE, folder / ONNX_INT8_FILE, calib)
    auc = float(roc_auc_score(val.labels, final(_onnx_probs(path, val.images))))
    spec = {"file": ONNX_INT8_FILE, "quantization": "static int8 (QDQ, per-channel weights), "
            f"calibrated on {len(calib)} training patches", "val_roc_auc": auc,
            "fp32_val_roc_auc": fp32_auc, "max_auc_drop": INT8_MAX_AUC_DROP}
    if fp32_auc - auc > INT8_MAX_AUC_DROP:
        path.unlink()
        spec.update(offered=False, file=None,
                    reason=f"int8 validation ROC AUC {auc:.4f} is more than {INT8_MAX_AUC_DROP} below fp32 {fp32_auc:.4f}")
    else:
        spec["offered"] = True
    return spec


def write_bundle(out_dir, model, cfg: TrainConfig, train, val, state: dict, fingerprint: str) -> ModelBundle:
    """Calibrate on the validation patients, export, check backends and write a verified bundle."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    from .export import export_onnx

    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)

    score = scoring_function(model, cfg.normalisation)
    val_probs = _predict(score, val.images)
    offset = prior_offset(datalib.class_weights(train.labels)) if cfg.imbalance != "none" else 0.0
    cal = calibrate(val_probs, val.labels, offset,
                    context=lambda z: mix_neighbours(z, *val.grid, CONTEXT_SELF_WEIGHT))

    def final(probs):  # what scoring does: calibrate each patch, then mix in its neighbours
        return with_context(calibrated_probability(probs, cal["temperature"], offset), *val.grid,
                            CONTEXT_SELF_WEIGHT)

    prob = final(val_probs)
    metrics = classification_metrics(val.labels, prob, cal["threshold"])
    metrics["n_patients"] = len(cfg.split["validation"])
    patch_only = calibrated_probability(val_probs, cal["temperature"], offset)
    metrics["patch_only"] = {"roc_auc": float(roc_auc_score(val.labels, patch_only)),
                             "pr_auc": float(average_precision_score(val.labels, patch_only))}

    model.save(tmp / KERAS_FILE)
    export_onnx(score, tmp / ONNX_FILE)
    onnx_prob = final(_onnx_probs(tmp / ONNX_FILE, val.images))
    fp32_diff = float(np.abs(onnx_prob - prob).max())
    fp32_auc = float(roc_auc_score(val.labels, onnx_prob))
    backends = {"onnx": {"file": ONNX_FILE, "precision": "fp32", "offered": True,
                         "max_abs_diff_vs_keras_on_validation": fp32_diff},
                "keras": {"file": KERAS_FILE, "precision": "fp32", "offered": True},
                "onnx-int8": _int8_backend(tmp, train, val, final, fp32_auc, cfg.seed)}

    meta = {
        "name": out_dir.name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "code_version": code_version(),
        "architecture": {"name": cfg.arch, "width": cfg.width, "flops_per_patch": flops_per_patch(model),
                         "params": int(model.count_params()), "output": "softmax (no IDC, IDC)"},
        "input": {"shape": [PATCH_SIZE, PATCH_SIZE, 3], "dtype": "uint8", "channels": "RGB",
                  "target_mpp": KAGGLE_MPP,
                  "partial_patches": "padded with white (255) at right/bottom to 50x50"},
        "normalisation": cfg.normalisation,
        "calibration": {k: cal[k] for k in ("method", "temperature", "logit_offset", "nll_before", "nll_after")}
        | {"fitted_on": "validation patients"},
        "context": {"self_weight": CONTEXT_SELF_WEIGHT,
                    "rule": "final logit = self_weight x the patch's calibrated logit + (1 - self_weight) x "
                            "the mean calibrated logit of its scored 8-connected grid neighbours (same "
                            "slide); unchanged without neighbours"},
        "threshold": {"value": cal["threshold"], "rule": cal["threshold_rule"]},
        "split": cfg.split,
        "validation_metrics": metrics,
        "training": {"data_fingerprint": fingerprint, "data_dirs": [str(d) for d in cfg.data_dirs],
                     "n_train_patches": len(train), "n_validation_patches": len(val),
                     "optimizer": {"name": "Adam", **TRAINING[cfg.arch]},
                     "config": {k: v for k, v in asdict(cfg).items()
                                if k not in ("split", "normalisation", "resume_from", "data_dirs")},
                     "best_epoch": state["best_epoch"] + 1, "epochs_run": state["epoch"] + 1,
                     "history": state["history"]},
        "backends": backends,
    }
    write_manifest(tmp, meta)
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
    ckpt = fit(cfg, run_dir, resume=resume, ray_address=ray_address)
    state = json.loads((ckpt / STATE_FILE).read_text())
    if (state.get("arch"), state.get("width")) != (cfg.arch, cfg.width):
        raise ValueError(f"{ckpt}: checkpoint is of {state.get('arch')} width {state.get('width')}, "
                         f"not {cfg.arch} width {cfg.width}")
    model = build(cfg.arch, cfg.width)
    model.load_weights(ckpt / "best.weights.h5")
    return write_bundle(out_dir, model, cfg, train, val, state, datalib.fingerprint(cfg.data_dirs))
