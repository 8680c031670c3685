"""One error hierarchy: an :class:`IdcmapError` is bad input or an unusable file, and its message
is one line naming the file and the problem. The command line prints it as ``Error: <message>``
and exits 1; any other exception is a bug and keeps its traceback."""

from __future__ import annotations


class IdcmapError(Exception):
    """Bad input or an unusable file; ``str()`` is one line for the user."""


class SlideError(IdcmapError):
    """A slide that cannot be used. ``str()`` is one line: ``<file>: <what is wrong>``."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = " ".join(str(reason).split())  # always one line
        super().__init__(f"{self.path}: {self.reason}")

    def __reduce__(self):  # picklable, so it crosses from a Ray worker to the driver as itself
        return type(self), (self.path, self.reason)


class InputError(IdcmapError):
    """Input that cannot make a job or a training run: inputs, manifests, data folders, options."""


class BundleError(IdcmapError):
    """A model bundle that is missing, malformed, modified or lacks what was asked of it."""


class JobError(IdcmapError):
    """A job folder that cannot be used: locked by another writer, unwritable, or with damaged files."""
