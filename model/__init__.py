"""The IDC model: architectures, training, evaluation, calibration, bundles, inference backends.

``idcmap.model.evaluate.evaluate`` is not imported here: it pulls in scikit-learn, which scoring workers
(every Ray worker imports this package) do not need.
"""

from .backends import BACKENDS, Backend, make_backend
from .bundle import BundleError, ModelBundle, load_bundle

__all__ = ["BACKENDS", "Backend", "BundleError", "ModelBundle", "load_bundle", "make_backend"]
