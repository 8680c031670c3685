"""Jobs: the command line, job specs, the scoring pipeline, aggregation and reports."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("idcmap")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+source"
