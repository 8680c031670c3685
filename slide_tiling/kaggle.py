"""The Kaggle IDC patch folder (PATIENT/{0,1}/PATIENT_idx5_xX_yY_classC.png) read as a virtual slide.

Frame: the dataset's X, Y are 1-based (all are 1 mod 50). We use 0-based pixels throughout, so a
patch named ``x1001_y51`` covers pixels [1000, 1050) x [50, 100) of the virtual slide, which is grid
column 20, row 1. Pixels not covered by any patch are white background.

Edge patches in the dataset can be smaller than 50x50; everywhere in idcmap (training and scoring)
a partial patch is padded with white (255) at its right and bottom edge to the full patch size.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .defaults import KAGGLE_MPP, PATCH_SIZE
from .image_reader import png_size
from .reader import SlideError, SlideReader

#: the resolution of the Kaggle patches (2.5x of a 40x scan at ~0.25 µm/px)
_NAME = re.compile(r"^(?P<patient>[^_/]+)_idx5_x(?P<x>\d+)_y(?P<y>\d+)_class(?P<cls>[01])\.png$")


@dataclass(frozen=True)
class KagglePatch:
    path: Path
    patient_id: str
    x: int  # 0-based left pixel (dataset X minus 1)
    y: int  # 0-based top pixel (dataset Y minus 1)
    label: int


def parse_patch_name(path) -> KagglePatch | None:
    """Parse a Kaggle patch file name; None when the name does not follow the pattern."""
    path = Path(path)
    m = _NAME.match(path.name)
    if not m:
        return None
    return KagglePatch(path, m["patient"], int(m["x"]) - 1, int(m["y"]) - 1, int(m["cls"]))


def list_patches(patient_dir) -> list[KagglePatch]:
    """All patches of one patient folder (both class sub-folders), sorted by (y, x)."""
    patient_dir = Path(patient_dir)
    found = [
        p
        for sub in ("0", "1")
        for f in sorted((patient_dir / sub).glob("*.png"))
        if (p := parse_patch_name(f)) is not None
    ]
    return sorted(found, key=lambda p: (p.y, p.x, p.label))


def is_patient_dir(path) -> bool:
    path = Path(path)
    return path.is_dir() and any(
        parse_patch_name(f) for sub in ("0", "1") if (path / sub).is_dir() for f in (path / sub).iterdir()
    )


def pad_patch(img: np.ndarray, size: int = PATCH_SIZE) -> np.ndarray:
    """Pad a partial patch with white at right/bottom to ``size`` x ``size`` (crop if larger)."""
    img = img[:size, :size]
    h, w = img.shape[:2]
    if (h, w) == (size, size):
        return img
    out = np.full((size, size, 3), 255, np.uint8)
    out[:h, :w] = img
    return out


def load_patch(path, size: int | None = PATCH_SIZE) -> np.ndarray:
    """Read one patch PNG as RGB uint8; padded to ``size`` unless ``size`` is None."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise SlideError(path, "not a readable image")
    img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    return pad_patch(img, size) if size else img


class KaggleFolderReader(SlideReader):
    """One patient's patch folder as a single-level virtual slide at 4.0 µm/px."""

    format = "kaggle-idc-folder"

    def __init__(self, path):
        super().__init__(path)
        self.patches = list_patches(self.path)
        if not self.patches:
            raise SlideError(path, "folder holds no Kaggle IDC patches (PATIENT/{0,1}/*_idx5_x*_y*_class*.png)")
        self.patient_id = self.patches[0].patient_id
        # slide extent: exact for edge patches, whose size we only learn from their header
        w = h = 0
        for p in self.patches:
            size = png_size(p.path)
            if size is None:
                raise SlideError(p.path, "not a PNG file")
            pw, ph = size
            w, h = max(w, p.x + pw), max(h, p.y + ph)
        self._dims = (w, h)
        self._index: dict[tuple[int, int], KagglePatch] = {
            (p.x // PATCH_SIZE, p.y // PATCH_SIZE): p for p in self.patches
        }

    @property
    def level_dimensions(self):
        return [self._dims]

    @property
    def mpp(self):
        return (KAGGLE_MPP, KAGGLE_MPP)

    @property
    def objective_power(self):
        return 2.5

    @property
    def vendor(self):
        return "kaggle-idc"

    def _read(self, level, x, y, w, h):  # one level: level pixels are level-0 pixels
        out = np.full((h, w, 3), 255, np.uint8)
        c0, r0 = x // PATCH_SIZE, y // PATCH_SIZE
        c1, r1 = (x + w - 1) // PATCH_SIZE, (y + h - 1) // PATCH_SIZE
        for r in range(r0, r1 + 1):
            for c in range(c0, c1 + 1):
                p = self._index.get((c, r))
                if p is None:
                    continue
                img = load_patch(p.path, size=None)
                ph, pw = img.shape[:2]
                ax0, ay0 = max(p.x, x), max(p.y, y)
                ax1, ay1 = min(p.x + pw, x + w), min(p.y + ph, y + h)
                if ax1 > ax0 and ay1 > ay0:
                    out[ay0 - y : ay1 - y, ax0 - x : ax1 - x] = img[ay0 - p.y : ay1 - p.y, ax0 - p.x : ax1 - p.x]
        return out

    def label_map(self) -> np.ndarray:
        """Ground truth at patch resolution: int8 (rows, cols); -1 no patch, 0 no IDC, 1 IDC."""
        cols = -(-self._dims[0] // PATCH_SIZE)
        rows = -(-self._dims[1] // PATCH_SIZE)
        out = np.full((rows, cols), -1, np.int8)
        for p in self.patches:
            out[p.y // PATCH_SIZE, p.x // PATCH_SIZE] = p.label
        return out
