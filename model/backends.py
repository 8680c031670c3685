"""Inference backends behind one interface.

``backend.predict(patches)`` takes uint8 RGB patches (N, S, S, 3), S the bundle's patch size (6
channels, each patch beside its neighbourhood, for a network that sees it: ``bundle.inputs``), and
returns float32 (N,): the calibrated probability of IDC (the bundle's temperature applied). Backends: ``keras`` (the
scoring ``tf.function``), ``onnx`` (ONNX Runtime fp32) and ``onnx-int8`` (ONNX Runtime, static
int8 quantization; offered only when the bundle says it passed its accuracy check).

``gpu=True`` asks for the GPU (ONNX Runtime's CUDA provider, TensorFlow's GPU device); where there
is none the backend runs on the CPU, and ``backend.device`` says where it runs.
"""

from __future__ import annotations

import numpy as np

from idcmap.errors import BundleError, InputError

from .bundle import ONNX_FILE, ONNX_INT8_FILE, ModelBundle, load_keras_model
from .scoring import calibrated_probability

BACKENDS = ("onnx", "keras", "onnx-int8")
DEFAULT_BATCH = 256


class Backend:
    """Batches uint8 patches through ``_raw`` (-> (n, 2) softmax) and applies the temperature."""

    name = "base"
    device = "CPU"  # where inference runs: "CPU" or "GPU"

    def __init__(self, bundle: ModelBundle, batch_size: int = DEFAULT_BATCH):
        self.bundle = bundle
        self.batch_size = batch_size
        self.temperature = bundle.temperature
        self.offset = bundle.logit_offset

    def _raw(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def predict(self, patches: np.ndarray) -> np.ndarray:
        patches = np.asarray(patches)
        shape = (self.bundle.patch_size, self.bundle.patch_size, self.bundle.channels)
        if patches.dtype != np.uint8 or patches.ndim != 4 or patches.shape[1:] != shape:
            raise ValueError(
                f"expected uint8 RGB patches of shape (N, {', '.join(map(str, shape))}), "
                f"got {patches.dtype} {patches.shape}"
            )
        if not len(patches):
            return np.zeros(0, np.float32)
        probs = np.concatenate(
            [
                self._raw(np.ascontiguousarray(patches[i : i + self.batch_size]))
                for i in range(0, len(patches), self.batch_size)
            ]
        )
        return calibrated_probability(probs, self.temperature, self.offset)


class KerasBackend(Backend):
    name = "keras"

    def __init__(
        self,
        bundle: ModelBundle,
        threads: int | None = None,
        batch_size: int = DEFAULT_BATCH,
        shared_cores: bool = False,
        gpu: bool = False,
    ):
        super().__init__(bundle, batch_size)
        import tensorflow as tf

        from .scoring import scoring_function

        if threads:
            try:  # only possible before TensorFlow has run anything in this process
                tf.config.threading.set_intra_op_parallelism_threads(threads)
                tf.config.threading.set_inter_op_parallelism_threads(1)
            except RuntimeError:
                pass
        if tf.config.list_physical_devices("GPU"):  # TensorFlow places ops on a GPU it sees (Ray hides
            self.device = "GPU"  # the GPUs from actors that did not ask for one)
        self._score = scoring_function(load_keras_model(bundle), bundle.normalisation)

    def _raw(self, batch):
        return self._score(batch).numpy()


class OnnxBackend(Backend):
    name = "onnx"
    file = ONNX_FILE

    def __init__(
        self,
        bundle: ModelBundle,
        threads: int | None = None,
        batch_size: int = DEFAULT_BATCH,
        shared_cores: bool = False,
        gpu: bool = False,
    ):
        super().__init__(bundle, batch_size)
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if shared_cores:  # idle threads sleep: spinning ones would take the CPU tiling needs
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        if gpu and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self._session = ort.InferenceSession(str(bundle.file(self.file)), opts, providers=providers)
        if self._session.get_providers()[0] == "CUDAExecutionProvider":  # not when CUDA failed to start
            self.device = "GPU"
        self._input = self._session.get_inputs()[0].name

    def _raw(self, batch):
        return self._session.run(None, {self._input: batch})[0]


class OnnxInt8Backend(OnnxBackend):
    name = "onnx-int8"
    file = ONNX_INT8_FILE


_CLASSES = {"keras": KerasBackend, "onnx": OnnxBackend, "onnx-int8": OnnxInt8Backend}


def check_backend(bundle: ModelBundle, name: str) -> None:
    """Raise a one-line error unless ``bundle`` offers backend ``name``."""
    if name not in _CLASSES:
        raise InputError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name not in bundle.backends:
        spec = bundle.backend_specs.get(name)
        why = spec.reason if spec and spec.reason else "not in this bundle"
        raise BundleError(f"backend {name!r} is not offered by {bundle.path}: {why}")


def make_backend(
    bundle: ModelBundle,
    name: str = "onnx",
    threads: int | None = None,
    batch_size: int = DEFAULT_BATCH,
    shared_cores: bool = False,
    gpu: bool = False,
) -> Backend:
    """An inference backend for a loaded (verified) bundle. ``shared_cores``: other work runs on
    the same cores (a scoring job's tiling), so idle ONNX threads sleep rather than spin.
    ``gpu``: on the GPU where there is one (``backend.device`` tells)."""
    check_backend(bundle, name)
    return _CLASSES[name](bundle, threads=threads, batch_size=batch_size, shared_cores=shared_cores, gpu=gpu)
