"""One writer per job folder: an flock on its ``.lock``, which the kernel releases if the holder dies."""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager

from idcmap.errors import JobError
from idcmap.jobs.jobdir.layout import JobDir


class JobLocked(JobError):
    """The job cannot be locked for writing: another writer holds it, or the folder is unwritable."""


@contextmanager
def job_lock(job: JobDir):
    path = job.lock
    try:
        job.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o640)
    except OSError as exc:  # read-only, a file in the way ...
        raise JobLocked(f"{exc.filename or path}: cannot write: {exc.strerror or exc}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise JobLocked(
                f"{job}: another idcmap score (pid {holder}) is writing this job; "
                "wait for it to finish or use another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def is_locked(job: JobDir) -> bool:
    path = job.lock
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
