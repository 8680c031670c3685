"""Files written whole or not at all: under a hidden temporary name in the same folder, renamed
into place when complete, so a reader (or a resumed run) never sees a partial file."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TEMP_SUFFIX = ".tmp"


@contextmanager
def atomic_path(path: Path, fsync: bool = False) -> Iterator[Path]:
    """Yields a temporary path beside ``path``; when the block succeeds, that file replaces
    ``path`` (after an fsync if asked); when it fails, the temporary file is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}{TEMP_SUFFIX}")
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: Path, data: bytes) -> bool:
    """Write ``data`` to ``path`` atomically. A file that already holds exactly ``data`` is left
    alone (its mtime too); returns whether the file was written."""
    path = Path(path)
    if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return False
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return True
