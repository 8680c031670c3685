"""Slide readers, resolution choice, tissue detection and the patch grid."""
from .kaggle import (KAGGLE_MPP, PATCH_SIZE, KaggleFolderReader, KagglePatch, is_patient_dir,
                     list_patches, load_patch, pad_patch, parse_patch_name)
from .reader import SlideError, SlideReader
