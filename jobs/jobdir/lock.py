"""One writer per job folder: an flock on its ``.lock``, which the kernel releases if the holder dies.

On a shared mount the lock holds between machines where the file system locks for all of its
clients (NFS with locking: Linux maps flock to NFS byte-range locks); where it refuses locks,
``score`` refuses rather than write unguarded (mounts that lock each machine alone, NFS ``nolock``
or SMB ``nobrl``, cannot be told apart from here: the README warns against them)."""

from __future__ import annotations

import errno
import fcntl
import os
import socket
from contextlib import contextmanager

from idcmap.errors import JobError
from idcmap.jobs.jobdir.layout import JobDir

#: what flock answers on a file system that refuses locks (an NFSv3 client without lockd, ...)
CANNOT_LOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


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
            holder = os.pread(fd, 256, 0).decode(errors="replace").strip() or "?"
            raise JobLocked(
                f"{job}: another idcmap score ({holder}) is writing this job; "
                "wait for it to finish or use another --out"
            ) from None
        except OSError as exc:
            if exc.errno not in CANNOT_LOCK:
                raise
            raise JobLocked(
                f"{path}: this file system cannot lock files ({exc.strerror}), so two writers could "
                "not be kept apart; put the job folder where locks work (a local disk, NFS with locking)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
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
