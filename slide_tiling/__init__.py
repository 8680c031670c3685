"""Slide readers, resolution choice, tissue detection and the patch grid."""

from .build_slide import build_slide, write_pyramid
from .defaults import DEFAULT_MIN_TISSUE, DEFAULT_TARGET_MPP, KAGGLE_MPP, PATCH_SIZE
from .grid import PatchGrid, neighbourhoods
from .kaggle import (
    KaggleFolderReader,
    KagglePatch,
    is_patient_dir,
    list_patches,
    load_patch,
    pad_patch,
    parse_patch_name,
)
from .open import links_back, open_slide
from .reader import SlideError, SlideReader
from .resolution import LevelChoice, choose_level, slide_mpp
from .tiler import PatchBatch, SlidePlan, TilingSpec, iter_patches, plan_slide, read_region_patches
from .tissue import TissueMask, TissueThreshold

__all__ = [
    "DEFAULT_MIN_TISSUE",
    "DEFAULT_TARGET_MPP",
    "KAGGLE_MPP",
    "PATCH_SIZE",
    "KaggleFolderReader",
    "KagglePatch",
    "LevelChoice",
    "PatchBatch",
    "PatchGrid",
    "SlideError",
    "SlidePlan",
    "SlideReader",
    "TilingSpec",
    "TissueMask",
    "TissueThreshold",
    "build_slide",
    "choose_level",
    "is_patient_dir",
    "iter_patches",
    "list_patches",
    "links_back",
    "load_patch",
    "neighbourhoods",
    "open_slide",
    "pad_patch",
    "parse_patch_name",
    "plan_slide",
    "read_region_patches",
    "slide_mpp",
    "write_pyramid",
]
