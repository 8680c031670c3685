"""Every patient of ../shared/data/idc/patients rebuilt at 2.5x, and every eighth at 40x: build-slide,
tile, and get the dataset's grid back (all 24 at both: ``python benchmarks/rebuild_check.py``)."""

from __future__ import annotations

import numpy as np
import openslide
import pytest

from idcmap.slide_tiling import KaggleFolderReader, build_slide, load_patch, open_slide
from idcmap.slide_tiling.groundtruth import check_rebuild

from .conftest import SHARED_DATA, shared_path

PATIENTS = (
    sorted(p.name for p in (SHARED_DATA / "idc" / "patients").iterdir())
    if (SHARED_DATA / "idc" / "patients").is_dir()
    else ["(no data)"]
)
CASES = [(p, None) for p in PATIENTS] + [(p, 0.25) for p in PATIENTS[::8]]  # (patient, scan mpp)
JPEG_MEAN_DIFF = 6.0  # mean |difference| (0-255) of a quality-90 JPEG round trip of these patches
JPEG_PATCH_DIFF = 8.0  # worst single patch
RESULTS: dict = {}


def blank(patch: np.ndarray) -> bool:
    """A patch that is glass, whatever our tissue detector says: >= 85% near-white pixels."""
    return (patch.min(axis=2) >= 215).mean() >= 0.85


def missed_tissue(patient_dir, missed) -> list:
    """The missed grid places whose dataset patch is not glass."""
    truth = {(p.x // 50, p.y // 50): p for p in KaggleFolderReader(patient_dir).patches}
    return [m for m in missed if not blank(load_patch(truth[m].path))]


@pytest.mark.parametrize(("patient", "scan_mpp"), CASES, ids=[f"{p}-{'40x' if m else '2.5x'}" for p, m in CASES])
def test_rebuilt_slide_tiles_back_to_the_dataset_grid(patient, scan_mpp, tmp_path):
    patient_dir = shared_path("idc", "patients", patient)
    slide = tmp_path / f"{patient}.tiff"
    info = build_slide(patient_dir, slide, tmp_path / "mask.png", scan_mpp=scan_mpp)

    with openslide.OpenSlide(str(slide)) as osr:  # a real OpenSlide-readable pyramid with its mpp
        assert float(osr.properties["openslide.mpp-x"]) == pytest.approx(scan_mpp or 4.0, rel=1e-4)
        assert [round(d) for d in osr.level_downsamples] == [1, 4, 16]
    with open_slide(slide) as reader:
        assert reader.format == "generic-tiff"

    check = check_rebuild(patient_dir, slide)
    RESULTS[(patient, scan_mpp)] = check
    assert check.level == (2 if scan_mpp else 0)  # 40x: level 16x is exactly 4 µm/px
    assert check.extra == 0, "tissue patches where the dataset has none (rebuilt background is white)"
    assert check.mean_abs_diff < JPEG_MEAN_DIFF and check.worst_patch_diff < JPEG_PATCH_DIFF
    not_blank = missed_tissue(patient_dir, check.missed)
    assert check.recall >= 0.99 or not not_blank, (
        f"{patient}: recall {check.recall:.4f}; missed non-blank patches {not_blank[:10]}"
    )
    assert info["patches"] == check.dataset_patches


@pytest.mark.parametrize("patient", PATIENTS[::4])
def test_a_slide_faded_toward_white_keeps_its_tissue(patient, tmp_path):
    """Issue 12's pale sections: blended 40 % of the way to white, a rebuilt slide still tiles back
    its tissue by the same rule as above (99 %, or every missed patch glass in the original)."""
    patient_dir = shared_path("idc", "patients", patient)
    slide = tmp_path / f"{patient}-faded.tiff"
    build_slide(patient_dir, slide, fade=0.4)
    check = check_rebuild(patient_dir, slide)
    assert check.extra == 0 and check.mean_abs_diff > JPEG_MEAN_DIFF  # the pixels did fade
    not_blank = missed_tissue(patient_dir, check.missed)
    assert check.recall >= 0.99 or not not_blank, f"{patient}: recall {check.recall:.4f}; missed {not_blank[:10]}"


def test_recall_over_all_patients():
    """Pooled over every rebuild above: at least 99.5% of patches come back."""
    if len(RESULTS) < len(CASES):
        pytest.skip("needs every per-patient rebuild test of this session to have run")
    total = sum(c.dataset_patches for c in RESULTS.values())
    recovered = sum(c.recovered for c in RESULTS.values())
    assert recovered / total >= 0.995


def test_ground_truth_mask_matches_labels(tmp_path):
    patient_dir = shared_path("idc", "patients", PATIENTS[0])
    mask_path = tmp_path / "mask.png"
    build_slide(patient_dir, tmp_path / "s.tiff", mask_path)
    import cv2

    mask = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
    reader = KaggleFolderReader(patient_dir)
    for p in reader.patches:
        assert mask[p.y // 50, p.x // 50] == (255 if p.label else 128)
    assert (mask > 0).sum() == len(reader.patches)
