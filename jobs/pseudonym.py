"""``--pseudonymize``: patient and slide ids replaced by keyed HMACs in everything a job writes.

The key is read from a file (``--key-file``) or the ``IDCMAP_PSEUDONYM_KEY`` environment
variable, never from the command line (which other users see in ``ps`` and shell history). The
same key gives the same pseudonyms in every job, so results stay linkable across jobs by whoever
holds the key and by no one else: re-identifying a patient means computing :func:`patient_pseudonym`
of a known id with the key.

The slide's path, real ids and file name are kept only in the driver's memory, for reading the
slide and for removing them from error messages (:meth:`idcmap.jobs.inputs.SlideTask.redact`).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import replace
from pathlib import Path

from idcmap.jobs.inputs import InputError, SlideTask

KEY_ENV = "IDCMAP_PSEUDONYM_KEY"
MIN_KEY_BYTES = 16
_DIGITS = 20  # hex digits kept: 80 bits, no collisions in any realistic cohort


def load_key(key_file: Path | None) -> bytes:
    """The HMAC key from ``key_file`` (surrounding whitespace dropped) or the environment."""
    if key_file is not None:
        try:
            key = Path(key_file).read_bytes().strip()
        except OSError as exc:
            raise InputError(f"{key_file}: cannot read the pseudonym key: {exc.strerror or exc}") from None
        where = str(key_file)
    elif os.environ.get(KEY_ENV):
        key, where = os.environ[KEY_ENV].strip().encode(), KEY_ENV
    else:
        raise InputError(
            f"--pseudonymize needs a key: --key-file FILE or the {KEY_ENV} environment "
            "variable (never on the command line)"
        )
    if len(key) < MIN_KEY_BYTES:
        raise InputError(
            f"{where}: the pseudonym key is {len(key)} bytes; use at least {MIN_KEY_BYTES} "
            "(e.g. `head -c 32 /dev/urandom | base64 > key`)"
        )
    return key


def _mac(key: bytes, *parts: str) -> str:
    return hmac.new(key, "\0".join(parts).encode(), hashlib.sha256).hexdigest()[:_DIGITS]


def patient_pseudonym(key: bytes, patient_id: str) -> str:
    return "p-" + _mac(key, "patient", patient_id)


def slide_pseudonym(key: bytes, patient_id: str, slide_id: str) -> str:
    return "s-" + _mac(key, "slide", patient_id, slide_id)


def key_id(key: bytes) -> str:
    """Names the key in job.json (so a re-run with another key is refused) without revealing it."""
    return _mac(key, "idcmap-key-id")[:12]


def pseudonymize(tasks: list[SlideTask], key: bytes) -> list[SlideTask]:
    """The tasks with pseudonymous ids; each remembers what to hide from messages."""
    out = []
    for t in tasks:
        hidden = {t.source, Path(t.source).name, t.patient_id, t.slide_id}
        out.append(
            replace(
                t,
                patient_id=patient_pseudonym(key, t.patient_id),
                slide_id=slide_pseudonym(key, t.patient_id, t.slide_id),
                hidden=tuple(sorted(hidden, key=len, reverse=True)),
            )
        )
    return out
