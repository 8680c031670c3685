"""DICOM VL Whole Slide Microscopy (one instance per pyramid level, tiled, JPEG/JPEG 2000 frames).

``path`` is a folder holding one series' instances, or one level file of a series. The instances of
that series that are levels (not LABEL, OVERVIEW or THUMBNAIL) form the pyramid. Only the frame
headers are indexed at open; a region decodes only the frames it overlaps.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import imagecodecs
import numpy as np

from .reader import SlideError, SlideReader, compose_from_tiles

WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"
_ITEM, _SEQ_END = (0xFFFE, 0xE000), (0xFFFE, 0xE0DD)
_DECODERS: dict[str, Callable[[bytes], np.ndarray]] = {
    "1.2.840.10008.1.2.4.50": imagecodecs.jpeg8_decode,  # JPEG baseline
    "1.2.840.10008.1.2.4.51": imagecodecs.jpeg8_decode,  # JPEG extended
    "1.2.840.10008.1.2.4.90": imagecodecs.jpeg2k_decode,  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91": imagecodecs.jpeg2k_decode,  # JPEG 2000
}


def _dcmread(*args, **kwargs):
    """``pydicom.dcmread``, pydicom imported on first use (0.1 s that every Ray worker would pay)."""
    import pydicom

    # files in the wild break VR length rules (UIDs of 65 chars); that is no reason to refuse a slide
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    return pydicom.dcmread(*args, **kwargs)


def is_dicom(path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:] == b"DICM"
    except OSError:
        return False


class _Instance:
    """One tiled instance: its header, and the file offsets of its frames (indexed on first use)."""

    def __init__(self, path: Path):
        self.path = path
        self.fh = open(path, "rb")
        try:
            self.ds = _dcmread(self.fh, stop_before_pixels=True)
        except Exception as exc:
            self.fh.close()
            raise SlideError(path, f"not a readable DICOM file: {exc}") from exc
        self.pixel_pos = self.fh.tell()
        ds = self.ds
        if ds.get("SOPClassUID") != WSI_SOP_CLASS:
            raise SlideError(path, f"DICOM but not a whole-slide image (SOP class {ds.get('SOPClassUID')})")
        self.width = int(ds.get("TotalPixelMatrixColumns") or ds.Columns)
        self.height = int(ds.get("TotalPixelMatrixRows") or ds.Rows)
        self.tile_w, self.tile_h = int(ds.Columns), int(ds.Rows)
        self.n_frames = int(ds.get("NumberOfFrames", 1))
        self.syntax = str(ds.file_meta.TransferSyntaxUID)
        if self.syntax not in _DECODERS:
            raise SlideError(path, f"unsupported DICOM transfer syntax {self.syntax} (need JPEG or JPEG 2000 frames)")
        if int(ds.get("SamplesPerPixel", 1)) != 3:
            raise SlideError(path, "DICOM slide is not RGB")
        organisation = ds.get("DimensionOrganizationType")
        if organisation not in (None, "TILED_FULL"):
            raise SlideError(path, f"DICOM DimensionOrganizationType {organisation} is not supported (need TILED_FULL)")
        self.cols = -(-self.width // self.tile_w)
        self.rows = -(-self.height // self.tile_h)
        if self.cols * self.rows != self.n_frames:
            raise SlideError(path, f"DICOM has {self.n_frames} frames for a {self.cols}x{self.rows} tile grid")
        self._offsets: list[tuple[int, int]] | None = None
        # TILED_FULL frames are row-major. Files that do not declare their organisation have been
        # seen written column-major (the shared small_dicom.dcm): there, the order whose tiles join
        # up seamlessly wins.
        self.column_major = organisation is None and self._seams(column_major=True) < self._seams(column_major=False)

    @property
    def mpp(self):
        try:
            sp = self.ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
            return (float(sp[1]) * 1000.0, float(sp[0]) * 1000.0)  # (column, row) spacing, mm -> µm
        except (AttributeError, IndexError, KeyError):
            return None

    def frame_offsets(self) -> list[tuple[int, int]]:
        """(offset, length) of every frame's bytes; one fragment per frame (as WSI encoders write)."""
        if self._offsets is None:
            fh = self.fh
            fh.seek(self.pixel_pos + 12)  # tag, VR, reserved, undefined length
            items = []
            while True:
                head = fh.read(8)
                if len(head) < 8:
                    raise SlideError(self.path, "DICOM pixel data is truncated")
                group, elem, length = struct.unpack("<HHI", head)
                if (group, elem) == _SEQ_END:
                    break
                if (group, elem) != _ITEM:
                    raise SlideError(self.path, "DICOM pixel data is not encapsulated as expected")
                items.append((fh.tell(), length))
                fh.seek(length, 1)
            fragments = items[1:]  # the first item is the basic offset table
            if len(fragments) != self.n_frames:
                raise SlideError(self.path, f"DICOM has {len(fragments)} fragments for {self.n_frames} frames")
            self._offsets = fragments
        return self._offsets

    def frame_index(self, col: int, row: int, column_major: bool | None = None) -> int:
        column_major = self.column_major if column_major is None else column_major
        return col * self.rows + row if column_major else row * self.cols + col

    def _seams(self, column_major: bool, pairs: int = 8) -> float:
        """Mean step across the borders of neighbouring inner tiles in one frame order."""
        steps = []
        for r in range(min(self.rows - 1, pairs)):
            for c in range(min(self.cols - 2, pairs)):
                a = self.read_frame(self.frame_index(c, r, column_major)).astype(np.int16)
                b = self.read_frame(self.frame_index(c + 1, r, column_major)).astype(np.int16)
                steps.append(np.abs(a[:, -1] - b[:, 0]).mean())
        return float(np.mean(steps)) if steps else 0.0

    def read_frame(self, index: int) -> np.ndarray:
        offset, length = self.frame_offsets()[index]
        self.fh.seek(offset)
        data = self.fh.read(length)
        if len(data) != length:
            raise SlideError(self.path, f"DICOM frame {index} is truncated")
        img = _DECODERS[self.syntax](data)
        return img[..., :3] if img.ndim == 3 else np.repeat(img[..., None], 3, axis=2)

    def close(self):
        self.fh.close()


#: ImageType values of instances that are not pyramid levels (value 3 is VOLUME for levels)
NOT_LEVELS = ("LABEL", "OVERVIEW", "THUMBNAIL")


def _header(path: Path):
    """The few tags that place an instance: series, SOP class, image type (None: not readable)."""
    try:
        return _dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID", "ImageType", "SOPClassUID"])
    except Exception:
        return None


def _image_type(ds) -> str:
    """LABEL, OVERVIEW, THUMBNAIL or VOLUME (instances without an ImageType are taken as levels)."""
    kinds = [str(v).upper() for v in ds.get("ImageType") or []]
    return next((k for k in NOT_LEVELS if k in kinds), "VOLUME")


def volume_series(folder: Path) -> dict[str, list[Path]]:
    """The pyramid-level instances (whole-slide SOP class, not label, overview or thumbnail) of
    the DICOM files in ``folder``, by SeriesInstanceUID."""
    series: dict[str, list[Path]] = {}
    for f in sorted(folder.iterdir()):
        if f.is_file() and is_dicom(f) and (ds := _header(f)) is not None:
            if ds.get("SOPClassUID") == WSI_SOP_CLASS and _image_type(ds) == "VOLUME":
                series.setdefault(str(ds.get("SeriesInstanceUID")), []).append(f)
    return series


class DicomReader(SlideReader):
    """One series: a folder of its instances (one slide per folder), or one of its level files
    (its series' other levels are found beside it). Label, overview and thumbnail images are
    never levels."""

    format = "dicom-wsi"

    def __init__(self, path):
        super().__init__(path)
        path = Path(path)
        uid = None
        if path.is_file():
            ds = _header(path)
            if ds is None or ds.get("SOPClassUID") != WSI_SOP_CLASS:
                _Instance(path)  # raises the one-line reason
            if (kind := _image_type(ds)) != "VOLUME":
                raise SlideError(
                    path, f"a DICOM {kind} image, not a slide level; give a level file or the series folder"
                )
            uid = str(ds.get("SeriesInstanceUID"))
        series = volume_series(path.parent if path.is_file() else path)
        if uid is None:
            if not series:
                raise SlideError(path, "folder holds no DICOM whole-slide images")
            if len(series) > 1:
                raise SlideError(
                    path,
                    f"folder holds {len(series)} DICOM whole-slide series; put each slide's "
                    "instances in a folder of its own",
                )
            uid = next(iter(series))
        self._levels = sorted((_Instance(f) for f in series[uid]), key=lambda i: -i.width)

    @property
    def level_dimensions(self):
        return [(i.width, i.height) for i in self._levels]

    @property
    def mpp(self):
        return self._levels[0].mpp

    @property
    def vendor(self):
        return self._levels[0].ds.get("Manufacturer") or None

    def _read(self, level, lx, ly, w, h):
        inst = self._levels[level]
        return compose_from_tiles(
            lx, ly, w, h, inst.tile_w, inst.tile_h, lambda c, r: inst.read_frame(inst.frame_index(c, r))
        )

    def close(self):
        for inst in self._levels:
            inst.close()
