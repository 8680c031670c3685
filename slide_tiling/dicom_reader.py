"""DICOM VL Whole Slide Microscopy (one instance per pyramid level, tiled, JPEG/JPEG 2000 frames).

``path`` is one instance file or a folder of instances. The instances of the same series whose
ImageType says VOLUME form the pyramid. Only the frame headers are indexed at open; a region decodes
only the frames it overlaps.
"""
from __future__ import annotations

import struct
from pathlib import Path

import imagecodecs
import numpy as np

from .reader import SlideError, SlideReader, compose_from_tiles

WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"
_ITEM, _SEQ_END = (0xFFFE, 0xE000), (0xFFFE, 0xE0DD)
_DECODERS = {
    "1.2.840.10008.1.2.4.50": imagecodecs.jpeg8_decode,   # JPEG baseline
    "1.2.840.10008.1.2.4.51": imagecodecs.jpeg8_decode,   # JPEG extended
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


class DicomReader(SlideReader):
    format = "dicom-wsi"

    def __init__(self, path):
        super().__init__(path)
        path = Path(path)
        first = path if path.is_file() else next(iter(sorted(f for f in path.iterdir() if is_dicom(f))), None)
        if first is None:
            raise SlideError(path, "folder holds no DICOM files")
        base = _Instance(first)
        series = base.ds.get("SeriesInstanceUID")
        instances = [base]
        for f in sorted(first.parent.iterdir()):
            if f == first or not is_dicom(f):
                continue
            try:
                other = _dcmread(f, stop_before_pixels=True,
                                        specific_tags=["SeriesInstanceUID", "ImageType", "SOPClassUID"])
            except Exception:
                continue
            if other.get("SeriesInstanceUID") == series and other.get("SOPClassUID") == WSI_SOP_CLASS \
                    and "VOLUME" in [str(v) for v in other.get("ImageType", [])]:
                instances.append(_Instance(f))
        self._levels = sorted(instances, key=lambda i: -i.width)

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
        return compose_from_tiles(lx, ly, w, h, inst.tile_w, inst.tile_h,
                                  lambda c, r: inst.read_frame(inst.frame_index(c, r)))

    def close(self):
        for inst in self._levels:
            inst.close()
