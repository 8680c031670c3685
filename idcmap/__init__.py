"""idcmap: distributed scoring of breast-cancer whole-slide images for invasive ductal carcinoma.

The repository's top-level folders install as this package's sub-packages:
``idcmap.slide_tiling`` (readers, tissue, the patch grid), ``idcmap.model`` (training, bundles,
inference), ``idcmap.jobs`` (the scoring job, its outputs and the CLI), ``idcmap.cluster`` (Ray)
and ``idcmap.models`` (the shipped default bundle).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("idcmap")
except PackageNotFoundError:  # a source tree that is not installed
    __version__ = "0.0.0+source"
