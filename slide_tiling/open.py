"""Open any supported slide: pick the reader from what the file is, not from its name."""

from __future__ import annotations

import os
from pathlib import Path

import openslide

from .dicom_reader import DicomReader, is_dicom
from .image_reader import ImageReader
from .kaggle import KaggleFolderReader, is_patient_dir
from .openslide_reader import OpenSlideReader
from .reader import SlideError, SlideReader
from .tiff_reader import TiffReader

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_IMAGE_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"BM")


#: refuse slides whose level 0 declares more pixels than this (about 8x a large 40x scan): a
#: corrupt or hostile header, which would cost hours of reading even though nothing is held whole
MAX_LEVEL0_PIXELS = 300_000 * 300_000


def open_slide(path) -> SlideReader:
    """Open a slide file or folder, or raise SlideError with a one-line reason."""
    reader = _open(Path(path))
    w, h = reader.dimensions
    if w <= 0 or h <= 0 or w * h > MAX_LEVEL0_PIXELS:
        reader.close()
        raise SlideError(
            path,
            f"declared size {w} x {h} px is not plausible for a slide "
            f"(limit {MAX_LEVEL0_PIXELS:.1e} px); refusing it before reading",
        )
    return reader


def links_back(path) -> Path | None:
    """Where ``path`` leads if it is a folder link to itself or to a folder above it (a loop)."""
    path = Path(path)
    if not (path.is_symlink() and path.is_dir()):
        return None
    target, parent = path.resolve(), path.parent.resolve()
    return target if target == parent or target in parent.parents else None


def _open(path: Path) -> SlideReader:
    if not path.exists():
        raise SlideError(path, "no such file or folder")
    if path.is_dir():
        if (target := links_back(path)) is not None:
            raise SlideError(path, f"directory loop: links back to {target}")
        if is_patient_dir(path):
            return KaggleFolderReader(path)
        if any(is_dicom(f) for f in path.iterdir() if f.is_file()):
            return DicomReader(path)
        raise SlideError(path, "folder is neither a Kaggle IDC patient folder nor a DICOM slide")
    if not os.access(path, os.R_OK):
        raise SlideError(path, "permission denied")
    if path.stat().st_size == 0:
        raise SlideError(path, "file is empty (0 bytes)")
    with open(path, "rb") as f:
        head = f.read(8)
    if is_dicom(path):
        return DicomReader(path)
    if head.startswith(_TIFF_MAGIC) or path.suffix.lower() in (".ndpi", ".mrxs", ".scn", ".vms", ".bif"):
        if openslide.OpenSlide.detect_format(str(path)):
            try:
                reader = OpenSlideReader(path)
            except SlideError:
                if not head.startswith(_TIFF_MAGIC):
                    raise
            else:
                if reader.format not in ("generic-tiff", "aperio-svs"):
                    return reader
                try:
                    tiff = TiffReader(path)
                except SlideError:
                    return reader
                # OpenSlide's generic TIFF sees only the main IFD chain; SubIFD pyramids
                # (OME-TIFF, QuPath exports) and OME mpp need tifffile
                if reader.format == "generic-tiff" and (
                    tiff.level_count > reader.level_count or (tiff.mpp and not reader.mpp)
                ):
                    reader.close()
                    return tiff
                if tiff.level_dimensions == reader.level_dimensions:
                    # tifffile decodes the same tiles to the same pixels (JPEG and JPEG 2000 SVS
                    # checked pixel for pixel), 4x faster than OpenSlide's ARGB round trip
                    reader.pixels = tiff
                else:
                    tiff.close()
                return reader
        if head.startswith(_TIFF_MAGIC):
            return TiffReader(path)
    if head.startswith(_IMAGE_MAGIC):
        return ImageReader(path)
    raise SlideError(
        path,
        f"unrecognised file format (starts with {head[:4]!r}); "
        "supported: SVS/NDPI/MRXS/SCN/TIFF, DICOM WSI, PNG/JPEG, Kaggle patch folders",
    )
