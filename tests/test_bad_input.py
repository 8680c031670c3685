"""Hostile or broken input: each bad slide fails alone with one line; huge declared sizes, unwritable
job folders and modified bundles are refused before any work."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
import tifffile
from click.testing import CliRunner

from idcmap.jobs.cli import cli
from idcmap.slide_tiling import SlideError, open_slide, write_pyramid

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
    blocked.mkdir(parents=True)  # the slide's file name is taken by a folder
    slides = REPO / "examples" / "slides"
    result = CliRunner().invoke(cli, ["score", str(slides), "--out", str(job)])
    assert result.exit_code == 1
    assert f"FAILED patient-8916/patient-8916: {blocked}: cannot write: Is a directory" in result.output
    assert (job / "predictions" / "patient-8863" / "patient-8863.parquet").is_file()  # the other slide
    assert not list(job.rglob("*.tmp")) and not any(blocked.iterdir())
    blocked.rmdir()
    again = CliRunner().invoke(cli, ["score", str(slides), "--out", str(job)])
    assert again.exit_code == 0 and blocked.is_file()
    assert not list((job / "failed").glob("*/*.json"))  # the failure record went with the success


def test_modified_bundle_is_refused_before_any_work(tmp_path, bundle):
    import shutil

    tampered = tmp_path / "bundle"
    shutil.copytree(bundle.path, tampered)
    with open(tampered / "model.onnx", "ab") as f:
        f.write(b"\0")
    job = tmp_path / "job"
    result = CliRunner().invoke(
        cli, ["score", str(REPO / "examples" / "slides"), "--out", str(job), "--model", str(tampered)]
    )
    assert result.exit_code == 1 and not job.exists()
    assert result.output.strip().splitlines() == [
        f"Error: {tampered / 'model.onnx'}: sha256 does not match model.json; the bundle was modified, "
        "refusing to load it"
    ]


def _png(path, img):
    cv2.imwrite(
        str(path),
        img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_RGB2BGR if img.shape[2] == 3 else cv2.COLOR_RGBA2BGRA),
    )
    return path


def test_every_kind_of_bad_input_fails_alone_in_one_job(tmp_path, bundle, ray_session):
    """Each broken slide: one line naming the file and the problem; every readable slide is scored."""
    from .test_readers import tissue_image

    d = tmp_path / "in"
    d.mkdir()
    (d / "empty.svs").write_bytes(b"")
    (d / "notes.svs").write_text("a text file named .svs\n")
    tissue = tissue_image(1024, 1024)
    tifffile.imwrite(
        d / "full.svs",
        tissue,
        tile=(256, 256),
        compression="jpeg",
        photometric="rgb",
        metadata=None,
        description="Aperio Image Library v12.0.15\n1024x1024 (256x256) JPEG/RGB|AppMag = 10|MPP = 1.0",
    )
    (d / "cut.svs").write_bytes((d / "full.svs").read_bytes()[: (d / "full.svs").stat().st_size * 2 // 3])
    write_pyramid(d / "whole.tiff", tissue, mpp=1.0, downsamples=(1,))
    (d / "cut.tiff").write_bytes((d / "whole.tiff").read_bytes()[: (d / "whole.tiff").stat().st_size // 2])
    (d / "png.tiff").write_bytes(cv2.imencode(".png", tissue_image(200, 200))[1].tobytes())
    _png(d / "gray.png", np.full((200, 200), 128, np.uint8))
    rgba = np.dstack([tissue_image(200, 200), np.full((200, 200), 255, np.uint8)])
    _png(d / "rgba.png", rgba)
    _png(d / "deep.png", np.full((200, 200, 3), 30000, np.uint16))
    write_pyramid(d / "glass.tiff", np.full((512, 512, 3), 242, np.uint8), mpp=1.0, downsamples=(1,))
    tifffile.imwrite(d / "nompp.tiff", tissue_image(400, 400), photometric="rgb")
    write_pyramid(d / "bomb.tiff", np.full((512, 512, 3), 200, np.uint8), mpp=0.25, downsamples=(1,))
    with tifffile.TiffFile(d / "bomb.tiff", mode="r+b") as tif:
        tif.pages[0].tags["ImageWidth"].overwrite(4_000_000)
        tif.pages[0].tags["ImageLength"].overwrite(3_000_000)
    import shutil

    shutil.copy(REPO / "examples" / "slides" / "patient-8916.tiff", d / "Müller-Ł.tiff")  # non-ASCII name
    rows = [
        ("empty", "empty.svs", ""),
        ("notes", "notes.svs", ""),
        ("cutsvs", "cut.svs", ""),
        ("cuttiff", "cut.tiff", ""),
        ("pngtiff", "png.tiff", "1.0"),
        ("gray", "gray.png", "1.0"),
        ("rgba", "rgba.png", "1.0"),
        ("deep", "deep.png", "1.0"),
        ("glass", "glass.tiff", ""),
        ("nompp", "nompp.tiff", ""),
        ("bomb", "bomb.tiff", ""),
        ("missing", "missing.svs", ""),
        ("Müller", "Müller-Ł.tiff", ""),
        ("svs", "full.svs", ""),
    ]
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(
        "patient_id,slide_path,mpp\n" + "".join(f"{p},{d / f},{m}\n" for p, f, m in rows), encoding="utf-8"
    )
    looped = tmp_path / "cohort"
    looped.mkdir()
    (looped / "loop").symlink_to(looped, target_is_directory=True)

    job = tmp_path / "job"
    result = CliRunner().invoke(cli, ["score", str(manifest), str(looped), "--out", str(job)])
    assert result.exit_code == 1, result.output
    failed = {
        line.split(":")[0].removeprefix("FAILED "): line
        for line in result.output.splitlines()
        if line.startswith("FAILED ")
    }
    expected = {
        "empty/empty": f"{d / 'empty.svs'}: file is empty (0 bytes)",
        "notes/notes": f"{d / 'notes.svs'}: unrecognised file format",
        "cutsvs/cut": f"{d / 'cut.svs'}: TIFF is truncated (segment",
        "cuttiff/cut": f"{d / 'cut.tiff'}: TIFF is truncated (segment",
        "gray/gray": f"{d / 'gray.png'}: grayscale image",
        "deep/deep": f"{d / 'deep.png'}: unsupported pixel type uint16 (need 8-bit RGB)",
        "glass/glass": f"{d / 'glass.tiff'}: no tissue found",
        "nompp/nompp": f"{d / 'nompp.tiff'}: slide has no microns-per-pixel metadata",
        "bomb/bomb": f"{d / 'bomb.tiff'}: declared size 4000000 x 3000000 px is not plausible",
        "missing/missing": f"{d / 'missing.svs'}: no such file or folder",
        "loop/loop": f"{looped / 'loop'}: directory loop: links back to {looped}",
    }
    assert set(failed) == set(expected), result.output
    for key, text in expected.items():
        line = failed[key]
        assert line.startswith(f"FAILED {key}: {text}"), line
        assert "\n" not in line and len(line) < 400
        record = json.loads((job / "failed" / f"{key}.json").read_text())
        assert record["error"] == line.removeprefix(f"FAILED {key}: ")
    # the readable ones are scored, once each: PNG content under a .tiff name, RGBA, non-ASCII, SVS
    done = sorted(str(f.relative_to(job / "predictions")) for f in (job / "predictions").glob("*/*.parquet"))
    assert done == ["Müller/Müller-Ł.parquet", "pngtiff/png.parquet", "rgba/rgba.parquet", "svs/full.parquet"]
    assert pq.read_metadata(job / "predictions" / "Müller" / "Müller-Ł.parquet").num_rows == 171
    assert (job / "maps" / "Müller" / "Müller-Ł" / "overlay.png").is_file()
    summaries = pq.read_table(job / "summaries.parquet").to_pandas()
    slides = summaries[summaries.level == "slide"].set_index("slide_id")
    assert (slides.status == "failed").sum() == len(expected) and (slides.status == "done").sum() == 4
    assert "Müller-Ł" in (job / "report" / "index.html").read_text(encoding="utf-8")
