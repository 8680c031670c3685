"""The IDC model: architectures, training, evaluation, calibration, bundles, inference backends."""
from .backends import BACKENDS, Backend, make_backend
from .bundle import BundleError, ModelBundle, load_bundle
from .evaluate import evaluate

__all__ = ["BACKENDS", "Backend", "BundleError", "ModelBundle", "evaluate", "load_bundle", "make_backend"]
