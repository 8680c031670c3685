"""The shipped model bundles (``idc-default`` is package data of the wheel)."""

from pathlib import Path

#: the default bundle for scoring
DEFAULT_MODEL = Path(__file__).resolve().parent / "idc-default"
