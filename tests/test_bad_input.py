"""Hostile or broken input refused before any work: huge declared sizes, unwritable job folders."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import tifffile
from click.testing import CliRunner

from jobs.cli import cli
from slide_tiling import SlideError, open_slide, write_pyramid

from .conftest import REPO


def test_tiff_declaring_a_huge_size_is_refused_before_reading(tmp_path):
    path = tmp_path / "bomb.tiff"
    write_pyramid(path, np.full((512, 512, 3), 200, np.uint8), mpp=0.25, downsamples=(1,))
    with tifffile.TiffFile(path, mode="r+b") as tif:
        tif.pages[0].tags["ImageWidth"].overwrite(4_000_000)
        tif.pages[0].tags["ImageLength"].overwrite(3_000_000)
    with pytest.raises(SlideError, match="declared size 4000000 x 3000000 px is not plausible") as err:
        open_slide(path)
    assert str(err.value).startswith(str(path))


def test_png_declaring_a_huge_size_is_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    cv2.imwrite(str(path), np.full((8, 8, 3), 200, np.uint8))
    data = bytearray(path.read_bytes())
    data[16:24] = (100_000).to_bytes(4, "big") + (90_000).to_bytes(4, "big")  # IHDR width, height
    path.write_bytes(bytes(data))
    with pytest.raises(SlideError, match="PNG declares 100000 x 90000 px"):
        open_slide(path)


def test_job_folder_that_cannot_be_made_is_one_line(tmp_path, bundle):
    taken = tmp_path / "a-file"
    taken.write_text("not a folder")
    slide = REPO / "examples" / "slides" / "patient-8916.tiff"
    result = CliRunner().invoke(cli, ["score", str(slide), "--out", str(taken / "job")])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [f"Error: {taken / 'job'}: cannot write: Not a directory"]


def test_write_error_fails_the_slide_with_its_reason_and_leaves_no_partial_file(tmp_path, bundle, ray_session):
    job = tmp_path / "job"
    blocked = job / "predictions" / "patient-8916" / "patient-8916.parquet"
    blocked.mkdir(parents=True)                       # the slide's file name is taken by a folder
    slides = REPO / "examples" / "slides"
    result = CliRunner().invoke(cli, ["score", str(slides), "--out", str(job)])
    assert result.exit_code == 1
    assert f"FAILED patient-8916/patient-8916: {blocked}: cannot write: Is a directory" in result.output
    assert (job / "predictions" / "patient-8863" / "patient-8863.parquet").is_file()   # the other slide
    assert not list(job.rglob("*.tmp")) and not any(blocked.iterdir())
    blocked.rmdir()
    again = CliRunner().invoke(cli, ["score", str(slides), "--out", str(job)])
    assert again.exit_code == 0 and blocked.is_file()
    assert not list((job / "failed").glob("*/*.json"))      # the failure record went with the success


def test_modified_bundle_is_refused_before_any_work(tmp_path, bundle):
    import shutil
    tampered = tmp_path / "bundle"
    shutil.copytree(bundle.path, tampered)
    with open(tampered / "model.onnx", "ab") as f:
        f.write(b"\0")
    job = tmp_path / "job"
    result = CliRunner().invoke(cli, ["score", str(REPO / "examples" / "slides"), "--out", str(job),
                                      "--model", str(tampered)])
    assert result.exit_code == 1 and not job.exists()
    assert result.output.strip().splitlines() == [
        f"Error: {tampered / 'model.onnx'}: sha256 does not match model.json; the bundle was modified, "
        "refusing to load it"]
