"""The model bundle: a folder with the Keras model, its ONNX export(s) and ``model.json``.

``model.json`` lists the sha256 of every other file and carries ``manifest_sha256``, the sha256
of its own canonical form without that key; it must be stored in that canonical form byte for
byte. :func:`load_bundle` checks all of this before anything is loaded, so any modified byte is
refused with a :class:`BundleError`. Nothing in a bundle is unpickled: weights are read by Keras
with ``safe_mode=True`` or by ONNX Runtime.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from idcmap.atomic import write_bytes_atomic
from idcmap.errors import BundleError
from idcmap.slide_tiling import neighbourhoods

from .scoring import with_context

MANIFEST = "model.json"
FORMAT = "idcmap-model-bundle/1"
KERAS_FILE = "model.keras"
ONNX_FILE = "model.onnx"
ONNX_INT8_FILE = "model.int8.onnx"
OOF_FILE = "oof_predictions.parquet"  # out-of-fold predictions of a cross-validated bundle


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _canonical(meta: dict) -> bytes:
    return (json.dumps(meta, indent=1, sort_keys=True, allow_nan=False) + "\n").encode()


def _manifest_hash(meta: dict) -> str:
    return hashlib.sha256(_canonical({k: v for k, v in meta.items() if k != "manifest_sha256"})).hexdigest()


@dataclass(frozen=True)
class BackendSpec:
    """One inference backend as the manifest describes it."""

    file: str | None
    offered: bool
    reason: str = ""  # why it is not offered


@dataclass(frozen=True)
class ModelBundle:
    """A verified bundle folder, its manifest (``meta``) and the fields scoring needs, parsed once
    by :func:`load_bundle`."""

    path: Path
    meta: dict
    name: str
    architecture: str
    flops_per_patch: int | None
    patch_size: int
    neighbourhood: int  # > 0: the network sees each patch beside its grid cells around, this many a side
    target_mpp: float
    normalisation: dict
    temperature: float
    logit_offset: float
    threshold: float
    context_weight: float  # self weight of the neighbour context step (1.0: none)
    baseline: tuple[float, float]  # weight and reference of the slide baseline step ((0, 0): none)
    metrics_kind: str  # "out-of-fold" or "validation": what the stored figures are
    metric_values: dict
    validation_patients: tuple[str, ...]
    backend_specs: dict[str, BackendSpec]

    @classmethod
    def parse(cls, path: Path, meta: dict) -> ModelBundle:
        """The typed view of a manifest; a missing or malformed field is a :class:`BundleError`."""
        try:
            oof = "out_of_fold_metrics" in meta
            baseline = meta.get("context", {}).get("baseline", {})  # absent: a bundle made before the step
            shape, cells = meta["input"]["shape"], int(meta["input"].get("neighbourhood_cells", 0))
            if shape[0] != shape[1] or shape[2] != (6 if cells else 3) or (cells and cells % 2 == 0):
                raise ValueError(f"input shape {shape} with neighbourhood_cells {cells} is not square RGB")
            return cls(
                path=path,
                meta=meta,
                name=str(meta["name"]),
                architecture=str(meta["architecture"]["name"]),
                flops_per_patch=meta["architecture"].get("flops_per_patch"),
                patch_size=int(shape[0]),
                neighbourhood=cells,
                target_mpp=float(meta["input"]["target_mpp"]),
                normalisation=dict(meta["normalisation"]),
                temperature=float(meta["calibration"]["temperature"]),
                logit_offset=float(meta["calibration"].get("logit_offset", 0.0)),
                threshold=float(meta["threshold"]["value"]),
                context_weight=float(meta.get("context", {}).get("self_weight", 1.0)),
                baseline=(float(baseline.get("weight", 0.0)), float(baseline.get("reference", 0.0))),
                metrics_kind="out-of-fold" if oof else "validation",
                metric_values=meta["out_of_fold_metrics"] if oof else meta.get("validation_metrics", {}),
                validation_patients=tuple(meta.get("split", {}).get("validation", [])),
                backend_specs={
                    k: BackendSpec(v.get("file"), bool(v.get("offered", True)), v.get("reason", ""))
                    for k, v in meta["backends"].items()
                },
            )
        except (KeyError, TypeError, ValueError, IndexError) as e:
            what = f"lacks {e}" if isinstance(e, KeyError) else f"has a malformed field ({e})"
            raise BundleError(f"{path / MANIFEST}: {what}; not a bundle written by `idcmap train`") from None

    @property
    def metrics(self) -> tuple[str, dict]:
        """("out-of-fold" or "validation", the stored figures)."""
        return self.metrics_kind, self.metric_values

    def final_probability(self, prob_patch, rows, cols, groups=None) -> np.ndarray:
        """Scoring's last steps on calibrated per-patch probabilities: the neighbour context, then
        the slide baseline (per group: a slide, or a patient's patches)."""
        return with_context(prob_patch, rows, cols, groups, self.context_weight, self.baseline)

    @property
    def channels(self) -> int:
        """The network's input channels: 3 (RGB), 6 with each patch's neighbourhood."""
        return 6 if self.neighbourhood else 3

    def inputs(self, images: np.ndarray, rows, cols, groups) -> np.ndarray:
        """The network's input for RGB patches at their grid places (each beside its neighbourhood
        among the patches given, for a network that sees it)."""
        return neighbourhoods(images, rows, cols, groups, self.neighbourhood) if self.neighbourhood else images

    @property
    def sha256(self) -> str:
        """Identifies the bundle (the manifest hash, which covers every file's hash)."""
        return self.meta["manifest_sha256"]

    @property
    def version(self) -> str:
        return f"{self.name}@{self.sha256[:12]}"

    def file(self, name: str) -> Path:
        return self.path / name

    def has_file(self, name: str) -> bool:
        return name in self.meta["files"]

    @property
    def backends(self) -> list[str]:
        """Inference backends this bundle offers."""
        return [name for name, spec in self.backend_specs.items() if spec.offered]


def write_manifest(folder, meta: dict) -> None:
    """Hash every file in ``folder``, then write ``model.json`` from ``meta`` (atomically)."""
    folder = Path(folder)
    meta = dict(meta, format=FORMAT)
    meta["files"] = {f.name: sha256_file(f) for f in sorted(folder.iterdir()) if f.is_file() and f.name != MANIFEST}
    meta.pop("manifest_sha256", None)
    meta["manifest_sha256"] = _manifest_hash(meta)
    write_bytes_atomic(folder / MANIFEST, _canonical(meta))


def load_bundle(path) -> ModelBundle:
    """Open a bundle folder after verifying its manifest and every file's sha256."""
    path = Path(path)
    manifest = path / MANIFEST
    if not manifest.is_file():
        raise BundleError(f"{path}: not a model bundle (no {MANIFEST}); pass a folder written by `idcmap train`")
    raw = manifest.read_bytes()
    try:
        meta = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise BundleError(
            f"{manifest}: not valid JSON ({e.__class__.__name__}); the bundle is damaged or modified"
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise BundleError(f"{manifest}: not an {FORMAT} manifest")
    if meta.get("manifest_sha256") != _manifest_hash(meta) or raw != _canonical(meta):
        raise BundleError(f"{manifest}: contents do not match manifest_sha256; the bundle was modified")
    files = meta.get("files") or {}
    for name, expected in files.items():
        f = path / name
        if not f.is_file():
            raise BundleError(f"{f}: listed in {MANIFEST} but missing; the bundle is incomplete")
        if sha256_file(f) != expected:
            raise BundleError(f"{f}: sha256 does not match {MANIFEST}; the bundle was modified, refusing to load it")
    extra = sorted(f.name for f in path.iterdir() if f.is_file() and f.name not in files and f.name != MANIFEST)
    if extra:
        raise BundleError(f"{path}: files not listed in {MANIFEST}: {', '.join(extra)}; the bundle was modified")
    return ModelBundle.parse(path, meta)


def load_keras_model(bundle: ModelBundle):
    """The bundle's Keras network (verified bundle only; ``safe_mode=True``, no compile)."""
    import keras

    return keras.saving.load_model(bundle.file(KERAS_FILE), compile=False, safe_mode=True)
