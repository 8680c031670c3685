"""Check a tiling against a Kaggle patient folder: same grid, same pixels, ground-truth labels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .kaggle import PATCH_SIZE, KaggleFolderReader, load_patch
from .open import open_slide
from .tiler import TilingSpec, iter_patches, plan_slide


@dataclass
class RebuildCheck:
    patient_id: str
    dataset_patches: int  # patches in the Kaggle folder
    recovered: int  # of those, returned as tissue patches at the same (x, y)
    extra: int  # tissue patches where the dataset has none
    mean_abs_diff: float  # mean |pixel difference| over recovered patches (0-255)
    worst_patch_diff: float  # largest per-patch mean |difference|
    level: int
    missed: list  # dataset patches not returned: [(col, row), ...]

    @property
    def recall(self) -> float:
        return self.recovered / self.dataset_patches if self.dataset_patches else 0.0


def check_rebuild(patient_dir, slide_path, spec: TilingSpec | None = None) -> RebuildCheck:
    """Tile ``slide_path`` and compare every tissue patch with the patient's dataset patch.

    The slide's target grid must be the dataset's: grid (col, row) is dataset
    (x, y) = (1 + 50 col, 1 + 50 row).
    """
    truth = KaggleFolderReader(patient_dir)
    wanted = {(p.x // PATCH_SIZE, p.y // PATCH_SIZE): p for p in truth.patches}
    total = len(wanted)
    means: list[float] = []
    extra = 0
    with open_slide(slide_path) as reader:
        plan = plan_slide(reader, spec or TilingSpec())
        for batch in iter_patches(reader, plan):
            for col, row, pixels in zip(batch.cols, batch.rows, batch.pixels):
                patch = wanted.get((int(col), int(row)))
                if patch is None:
                    extra += 1
                    continue
                means.append(np.abs(pixels.astype(np.int16) - load_patch(patch.path)).mean())
                del wanted[(int(col), int(row))]
    diffs = np.asarray(means, np.float64)
    return RebuildCheck(
        truth.patient_id,
        total,
        len(diffs),
        extra,
        float(diffs.mean()) if diffs.size else float("nan"),
        float(diffs.max()) if diffs.size else float("nan"),
        plan.level.level,
        sorted(wanted),
    )
