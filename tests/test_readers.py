"""Readers on inputs the tests build themselves, and every real file in ../shared/data/wsi."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import tifffile

from idcmap.slide_tiling import SlideError, TilingSpec, iter_patches, open_slide, plan_slide, write_pyramid
from idcmap.slide_tiling.tiff_reader import CACHE_BYTES as TIFF_CACHE_BYTES

from .conftest import shared_path


def tissue_image(h=600, w=800, seed=0):
    """A smooth pink/purple 'tissue' blob on glass: compresses well and is clearly tissue."""
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 240, np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    blob = ((yy - h / 2) / (h / 3)) ** 2 + ((xx - w / 2) / (w / 3)) ** 2 < 1
    noise = cv2.GaussianBlur(rng.integers(0, 60, (h, w)).astype(np.uint8), (9, 9), 3)
    img[blob] = np.stack([200 - noise, 110 - noise // 2, 170 - noise // 3], -1)[blob]
    return img


def test_pyramid_tiff_opens_in_openslide_with_mpp_and_levels(tmp_path):
    img = tissue_image()
    path = tmp_path / "slide.tiff"
    sizes = write_pyramid(path, img, mpp=0.5, upsample=2, downsamples=(1, 4, 16))
    assert sizes == [(1600, 1200), (400, 300), (100, 75)]
    with open_slide(path) as r:
        assert r.format == "generic-tiff" and r.mpp == pytest.approx((0.5, 0.5))
        assert r.level_dimensions == sizes
        region = r.read_region(0, 800, 600, 64, 64)  # upsampled 2x by repetition
        assert np.abs(region[::2, ::2].astype(int) - img[300:332, 400:432]).mean() < 4


def _openslide_pixels(path, level):
    import openslide

    with openslide.OpenSlide(str(path)) as slide:
        w, h = slide.level_dimensions[level]
        return np.asarray(slide.read_region((0, 0), level, (w, h)).convert("RGB"))


def test_generic_tiff_pixels_come_from_tifffile_equal_to_openslides(tmp_path):
    path = tmp_path / "slide.tiff"
    write_pyramid(path, tissue_image(700, 900), mpp=0.5, upsample=1, downsamples=(1, 4))
    with open_slide(path) as r:
        assert r.format == "generic-tiff" and r.pixels is not None  # OpenSlide's metadata, tifffile's pixels
        for level, (w, h) in enumerate(r.level_dimensions):
            first = r.read_region(level, 0, 0, w, h)
            assert np.array_equal(first, _openslide_pixels(path, level))
            assert np.array_equal(r.read_region(level, 0, 0, w, h), first)  # again, from the tile cache
        assert 0 < r.pixels._cached_bytes <= TIFF_CACHE_BYTES


@pytest.mark.parametrize("name", ["cmu-1-small-region.svs", "tcga-cr-7395-01a-01-ts1.svs"])
def test_svs_pixels_from_tifffile_equal_openslides(name):  # JPEG and JPEG 2000 tiles
    path = shared_path("wsi", name)
    with open_slide(path) as r:
        assert r.format == "aperio-svs" and r.pixels is not None
        for level, (w, h) in enumerate(r.level_dimensions):
            assert np.array_equal(r.read_region(level, 0, 0, w, h), _openslide_pixels(path, level))


def test_tifffile_reader_plain_striped_rgb(tmp_path):
    img = tissue_image(300, 400)
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, img, photometric="rgb", rowsperstrip=37, resolution=(2e4, 2e4), resolutionunit="CENTIMETER")
    with open_slide(path) as r:
        assert r.format == "tiff" and r.mpp == pytest.approx((0.5, 0.5))
        assert np.array_equal(r.read_region(0, 10, 30, 200, 100), img[30:130, 10:210])
        assert np.array_equal(r.read_region(0, 390, 290, 20, 20)[:10, :10], img[290:, 390:])


def test_tifffile_reader_tiled_compressed_pyramid(tmp_path):
    img = tissue_image(512, 768)
    path = tmp_path / "pyr.tif"
    with tifffile.TiffWriter(path) as tw:  # SubIFD pyramid: OpenSlide sees only its first level
        tw.write(img, tile=(128, 128), compression="zlib", subifds=1, photometric="rgb")
        tw.write(img[::2, ::2], tile=(128, 128), compression="zlib", subfiletype=1, photometric="rgb")
    with open_slide(path) as r:
        assert r.level_dimensions == [(768, 512), (384, 256)]
        assert np.array_equal(r.read_region(1, 200, 100, 100, 50), img[::2, ::2][50:100, 100:200])
        assert r.mpp is None


def test_dpi_defaults_are_not_taken_for_a_scan_resolution(tmp_path):
    path = tmp_path / "photo.tif"
    tifffile.imwrite(path, tissue_image(64, 64), photometric="rgb", resolution=(72, 72), resolutionunit="INCH")
    with open_slide(path) as r:
        assert r.mpp is None


def test_png_and_rgba_png(tmp_path):
    img = tissue_image(200, 300)
    rgba = np.dstack([img, np.full(img.shape[:2], 255, np.uint8)])
    rgba[:10, :10, 3] = 0
    cv2.imwrite(str(tmp_path / "a.png"), cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
    with open_slide(tmp_path / "a.png") as r:
        out = r.read_region(0, 0, 0, 300, 200)
        assert (out[:10, :10] == 255).all() and np.array_equal(out[10:, 10:], img[10:, 10:])


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.svs", b"", "file is empty"),
        ("notes.svs", b"this is a text file, not a slide\n", "unrecognised file format"),
        ("bad.tiff", b"II*\x00" + b"\x00" * 64, "not a readable TIFF"),
    ],
)
def test_bad_files_give_one_line_errors(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(SlideError, match=message) as err:
        open_slide(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_missing_file_and_grayscale_png(tmp_path):
    with pytest.raises(SlideError, match="no such file"):
        open_slide(tmp_path / "nope.svs")
    cv2.imwrite(str(tmp_path / "g.png"), np.zeros((20, 20), np.uint8))
    with pytest.raises(SlideError, match="grayscale"):
        open_slide(tmp_path / "g.png")


def test_truncated_tiff_fails_on_read_with_the_file_named(tmp_path):
    path = tmp_path / "slide.tiff"
    write_pyramid(path, tissue_image(1024, 1024), mpp=4.0, downsamples=(1,))
    data = path.read_bytes()
    cut = tmp_path / "cut.tiff"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(SlideError) as err:
        with open_slide(cut) as r:
            r.read_region(0, 0, 0, 1024, 1024)
    assert str(cut) in str(err.value)


# --- the real whole-slide files --------------------------------------------------------------
# (file, --mpp, expected tissue patches at 4 µm/px or the error it must give)
REAL = [
    ("cmu-1-small-region.svs", None, (20, 40)),
    ("tcga-cr-7395-01a-01-ts1.svs", None, "no microns-per-pixel"),
    ("tcga-cr-7395-01a-01-ts1.svs", 0.25, (15, 30)),
    ("kidney-48-5.tif", None, "no microns-per-pixel"),
    ("kidney-48-5.tif", 4.0, (2, 12)),
    ("small_dicom.dcm", None, "no microns-per-pixel"),
    ("small_dicom.dcm", 0.5, (25, 50)),
    ("small.svs", None, "smaller than half"),
]


@pytest.mark.parametrize("name, mpp, expected", REAL, ids=[f"{n}-{m}" for n, m, _ in REAL])
def test_real_wsi_tiles_or_fails_clearly(name, mpp, expected):
    path = shared_path("wsi", name)
    if isinstance(expected, str):
        with pytest.raises(SlideError, match=expected) as err:
            with open_slide(path) as r:
                plan_slide(r, TilingSpec(mpp=mpp))
        assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)
        return
    with open_slide(path) as r:
        plan = plan_slide(r, TilingSpec(mpp=mpp))
        n = sum(len(b) for b in iter_patches(r, plan))
    lo, hi = expected
    assert lo <= n <= hi, f"{name}: {n} tissue patches"


def test_dicom_frames_are_placed_where_they_join_up():
    """small_dicom.dcm stores its frames column-major without saying so; tiles must join seamlessly."""
    path = shared_path("wsi", "small_dicom.dcm")
    with open_slide(path) as r:
        assert r.format == "dicom-wsi" and r.dimensions == (3236, 2638)
        strip = r.read_region(0, 400, 0, 200, 2638).astype(int)  # crosses the tile border at x=500
    step_at_border = np.abs(strip[:, 99] - strip[:, 100]).mean()
    step_elsewhere = np.abs(strip[:, 49] - strip[:, 50]).mean()
    assert step_at_border < 2 * step_elsewhere + 5


def test_pen_ink_on_the_marked_dicom_yields_no_scored_patch():
    """The slide carries green and blue pen marks; no patch cut from it may be mostly ink (the
    tissue fraction alone would keep a patch whose ink leaves 5 % tissue showing)."""
    from idcmap.slide_tiling.tissue import ink_mask

    path = shared_path("wsi", "small_dicom.dcm")
    with open_slide(path) as r:
        plan = plan_slide(r, TilingSpec(mpp=0.5, target_mpp=0.5))  # patches of 50 level-0 px: ink fills some
        batches = list(iter_patches(r, plan))
    ink, ds, size0 = ink_mask(plan.thumbnail), plan.tissue.downsample, plan.grid.level0_patch_size

    def ink_share(x, y):
        x0, y0 = int(x / ds), int(y / ds)
        box = ink[y0 : max(y0 + 1, int((y + size0) / ds)), x0 : max(x0 + 1, int((x + size0) / ds))]
        return box.mean() if box.size else 0.0

    grid = [ink_share(c * size0, r * size0) for r in range(plan.grid.rows) for c in range(plan.grid.cols)]
    assert sum(share > 0.5 for share in grid) >= 10  # the ink covers many patches' worth of the slide
    cut = [ink_share(x, y) for b in batches for x, y in zip(b.x, b.y)]
    assert len(cut) > 0 and max(cut) <= 0.5  # and none of them is cut and scored


def test_ome_tiff_subifd_pyramid_with_physical_size(tmp_path):
    img = tissue_image(512, 768)
    path = tmp_path / "slide.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tw:
        tw.write(
            img,
            tile=(128, 128),
            subifds=1,
            photometric="rgb",
            metadata={"axes": "YXS", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25},
        )
        tw.write(img[::4, ::4], tile=(128, 128), subfiletype=1, photometric="rgb")
    with open_slide(path) as r:
        assert r.format == "tiff" and r.mpp == pytest.approx((0.25, 0.25))
        assert r.level_dimensions == [(768, 512), (192, 128)]
        assert np.array_equal(r.read_region(1, 400, 200, 64, 32), img[::4, ::4][50:82, 100:164])


def test_slide_error_crosses_process_boundaries_as_itself():
    """A scorer actor raises it; the driver must get the same one-line error back, not Ray's
    'unserializable exception' wrapper."""
    import pickle

    from idcmap.errors import IdcmapError, SlideError

    err = pickle.loads(pickle.dumps(SlideError("/slides/a b.svs", "not a readable\nTIFF")))
    assert isinstance(err, SlideError) and isinstance(err, IdcmapError)
    assert (str(err), err.path, err.reason) == (
        "/slides/a b.svs: not a readable TIFF",
        "/slides/a b.svs",
        "not a readable TIFF",
    )


# --- DICOM series written by the test ------------------------------------------------------------
def write_dicom_series(
    folder,
    image: np.ndarray,
    downsamples=(1, 4),
    tile: int = 64,
    mpp: float = 1.0,
    others=("LABEL", "OVERVIEW"),
    series_uid: str | None = None,
) -> dict[str, str]:
    """One DICOM whole-slide series in ``folder``: a level file per downsample (tiled, JPEG frames,
    TILED_FULL) and single-frame label/overview images; file names do not say which is which."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit, generate_uid

    from idcmap.slide_tiling.dicom_reader import WSI_SOP_CLASS

    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    files = {}
    kinds = [("VOLUME", ds) for ds in downsamples] + [(k, None) for k in others]
    for n, (kind, ds) in enumerate(kinds):
        img = image[::ds, ::ds] if ds else cv2.resize(image, (96, 64))
        size = tile if ds else max(img.shape[:2])
        h, w = img.shape[:2]
        rows, cols = -(-h // size), -(-w // size)
        padded = np.full((rows * size, cols * size, 3), 255, np.uint8)
        padded[:h, :w] = img
        frames = [
            cv2.imencode(
                ".jpg",
                cv2.cvtColor(padded[r * size : (r + 1) * size, c * size : (c + 1) * size], cv2.COLOR_RGB2BGR),
                [cv2.IMWRITE_JPEG_QUALITY, 95],
            )[1].tobytes()
            for r in range(rows)
            for c in range(cols)
        ]
        d = Dataset()
        d.file_meta = FileMetaDataset()
        d.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        d.file_meta.MediaStorageSOPClassUID = WSI_SOP_CLASS
        d.file_meta.MediaStorageSOPInstanceUID = d.SOPInstanceUID = generate_uid()
        d.SOPClassUID, d.SeriesInstanceUID, d.Modality = WSI_SOP_CLASS, series_uid, "SM"
        d.ImageType = ["ORIGINAL", "PRIMARY", kind, "NONE"]
        d.TotalPixelMatrixColumns, d.TotalPixelMatrixRows, d.Columns, d.Rows = w, h, size, size
        d.NumberOfFrames, d.SamplesPerPixel, d.PhotometricInterpretation = len(frames), 3, "YBR_FULL_422"
        d.BitsAllocated, d.BitsStored, d.HighBit, d.PixelRepresentation, d.PlanarConfiguration = 8, 8, 7, 0, 0
        d.DimensionOrganizationType = "TILED_FULL"
        measures = Dataset()
        measures.PixelSpacing = [mpp * (ds or 1) / 1000.0] * 2
        group = Dataset()
        group.PixelMeasuresSequence = [measures]
        d.SharedFunctionalGroupsSequence = [group]
        d.PixelData = encapsulate(frames)
        d["PixelData"].VR = "OB"
        d["PixelData"].is_undefined_length = True
        name = f"instance-{n:02d}.dcm"
        d.save_as(folder / name, enforce_file_format=True)
        files[name] = kind
    return files


def test_a_dicom_series_folder_is_one_slide_of_its_levels(tmp_path):
    img = tissue_image(300, 400)
    files = write_dicom_series(tmp_path / "S1", img)
    with open_slide(tmp_path / "S1") as r:
        assert r.format == "dicom-wsi" and r.level_dimensions == [(400, 300), (100, 75)]  # label, overview left out
        assert r.mpp == pytest.approx((1.0, 1.0))
        region = r.read_region(0, 0, 0, 400, 300)
    assert np.abs(region.astype(int) - img).mean() < 6  # JPEG q95
    level_file = next(n for n, k in files.items() if k == "VOLUME")
    with open_slide(tmp_path / "S1" / level_file) as r:  # one level file: the same series
        assert r.level_dimensions == [(400, 300), (100, 75)]
    label = next(n for n, k in files.items() if k == "LABEL")
    with pytest.raises(SlideError, match="a DICOM LABEL image, not a slide level"):
        open_slide(tmp_path / "S1" / label)


def test_a_folder_with_two_dicom_series_is_refused_in_one_line(tmp_path):
    write_dicom_series(tmp_path / "mixed", tissue_image(128, 128), downsamples=(1,), others=())
    for f in (tmp_path / "mixed").iterdir():
        f.rename(f.with_name("a-" + f.name))
    write_dicom_series(tmp_path / "mixed", tissue_image(128, 128, seed=1), downsamples=(1,), others=())
    with pytest.raises(SlideError, match="holds 2 DICOM whole-slide series; put each slide's instances"):
        open_slide(tmp_path / "mixed")


def test_dicom_instances_in_an_input_folder_make_one_slide_per_series_folder(tmp_path):
    from idcmap.jobs.inputs import collect_tasks

    img = tissue_image(200, 200)
    write_dicom_series(tmp_path / "in" / "P1" / "S1", img)  # a patient's series folder
    write_dicom_series(tmp_path / "in" / "P2", img)  # a patient folder of instances
    tasks = collect_tasks([tmp_path / "in"])
    assert [(t.patient_id, t.slide_id, t.source) for t in tasks] == [
        ("P1", "S1", str(tmp_path / "in" / "P1" / "S1")),
        ("P2", "P2", str(tmp_path / "in" / "P2")),
    ]
    assert [(t.patient_id, t.slide_id) for t in collect_tasks([tmp_path / "in" / "P1" / "S1"])] == [("S1", "S1")]
