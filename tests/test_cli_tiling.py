"""The tiling commands as a user runs them: output, files written, errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
from click.testing import CliRunner

from idcmap import __version__
from idcmap.jobs.cli import cli

from .conftest import shared_path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
EXAMPLE = EXAMPLES / "slides" / "patient-8863.tiff"
EXAMPLE_MASK = EXAMPLES / "ground-truth" / "patient-8863-idc-mask.png"


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_version():
    result = run("--version")
    assert result.exit_code == 0 and __version__ in result.output


def test_info_on_the_example():
    result = run("info", EXAMPLE)
    assert result.exit_code == 0, result.output
    assert "generic-tiff" in result.output and "2791 x 2335" in result.output
    assert "chosen level     0 at 4 µm/px" in result.output
    meta = json.loads(run("info", EXAMPLE, "--json", "--target-mpp", "16").output)
    assert meta["mpp"] == [4.0, 4.0] and meta["level_dimensions"][1] == [698, 584]
    assert meta["chosen_level"]["level"] == 1  # 4 x 4.0 = 16 µm/px: the 4x level, no resize


def test_tile_writes_csv_and_preview_matching_the_ground_truth(tmp_path):
    csv_path, png_path = tmp_path / "out" / "patches.csv", tmp_path / "out" / "preview.png"
    result = run("tile", EXAMPLE, "--patches", csv_path, "--preview", png_path)
    assert result.exit_code == 0, result.output
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    assert result.output.startswith(f"{EXAMPLE}: {len(rows)} tissue patches of 2632")
    truth = cv2.imread(str(EXAMPLE_MASK), cv2.IMREAD_GRAYSCALE)  # 1 px per dataset patch
    got = {(int(r["col"]), int(r["row"])) for r in rows}
    assert got == {(c, r) for r, c in zip(*np.nonzero(truth))}  # exactly the dataset's patches
    for r in rows[:50]:
        assert int(r["x"]) == 50 * int(r["col"]) and int(r["y"]) == 50 * int(r["row"])
        assert 0.05 <= float(r["tissue_fraction"]) <= 1
    preview = cv2.imread(str(png_path))
    assert preview.shape[:2] == (584, 698)  # the tissue thumbnail: the 4x level, 12.5 px per patch


def test_tile_overlapping_stride_and_other_patch_size():
    result = run("tile", EXAMPLE, "--stride", "25", "--patch-size", "64", "--min-tissue", "0.5")
    assert result.exit_code == 0, result.output
    assert "64 px at 4 µm/px" in result.output and "in the 111x92 grid" in result.output


def test_errors_are_one_line_and_name_the_file(tmp_path):
    bad = tmp_path / "slide.svs"
    bad.write_text("not a slide")
    for args in (("tile", bad), ("info", bad), ("tile", tmp_path / "missing.svs")):
        result = run(*args)
        assert result.exit_code == 1
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"Error: {args[1]}: ")
        assert "Traceback" not in result.output


def test_tile_without_mpp_and_with_mpp():
    kidney = shared_path("wsi", "kidney-48-5.tif")
    result = run("tile", kidney)
    assert result.exit_code == 1 and "no microns-per-pixel metadata; give it with --mpp" in result.output
    result = run("tile", kidney, "--mpp", "4")
    assert result.exit_code == 0 and " tissue patches of 570 " in result.output


def test_build_slide_command(tmp_path):
    patient = shared_path("idc", "patients", "8916")
    out = tmp_path / "s.tiff"
    result = run("build-slide", patient, out, "--mask", tmp_path / "m.png", "--scan-mpp", "1")
    assert result.exit_code == 0, result.output
    assert "171 patches (111 IDC), levels 4800x6800 / 1200x1700 / 300x425 at 1 µm/px" in result.output
    tiled = run("tile", out)
    assert tiled.exit_code == 0 and ": 171 tissue patches" in tiled.output
    assert run("build-slide", patient, out, "--scan-mpp", "0.3").exit_code == 1
