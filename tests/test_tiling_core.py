"""The numeric core without real data: grid, level choice, tissue detection, region tiling."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from idcmap.slide_tiling import (
    PatchGrid,
    SlideError,
    SlideReader,
    TilingSpec,
    choose_level,
    iter_patches,
    neighbourhoods,
    pad_patch,
    plan_slide,
    read_region_patches,
)
from idcmap.slide_tiling.reader import compose_from_tiles
from idcmap.slide_tiling.tissue import GREY_DROP, TissueMask, TissueThreshold, fit_threshold, ink_mask

PINK, PURPLE, GLASS = (230, 150, 190), (120, 60, 150), (245, 245, 245)


class ArrayReader(SlideReader):
    """A slide held in a numpy array, with optional pyramid levels made by striding."""

    format = "array"

    def __init__(self, image, mpp=(0.5, 0.5), downsamples=(1,)):
        super().__init__("array")
        self.levels = [np.ascontiguousarray(image[::d, ::d]) for d in downsamples]
        self._mpp = mpp

    @property
    def level_dimensions(self):
        return [(a.shape[1], a.shape[0]) for a in self.levels]

    @property
    def mpp(self):
        return self._mpp

    def _read(self, level, lx, ly, w, h):
        return self.levels[level][ly : ly + h, lx : lx + w]


def test_grid_covers_the_slide_and_maps_to_level0():
    grid = PatchGrid(2791, 2335, (1.0, 1.0))
    assert (grid.cols, grid.rows) == (56, 47)  # last column/row overhang: 2791 = 55*50 + 41
    x, y = grid.level0_xy([0, 20, 55], [0, 1, 46])
    assert x.tolist() == [0, 1000, 2750] and y.tolist() == [0, 50, 2300]
    g16 = PatchGrid(44656, 37360, (16.0, 16.0))
    assert (g16.cols, g16.rows) == (56, 47) and g16.level0_patch_size == 800
    covered = np.zeros((grid.rows, grid.cols), int)
    for c0, r0, c1, r1 in grid.regions(20):
        covered[r0:r1, c0:c1] += 1
    assert (covered == 1).all()


def test_grid_with_overlapping_stride():
    grid = PatchGrid(200, 100, (1.0, 1.0), patch_size=50, stride=25)
    assert (grid.cols, grid.rows) == (7, 3)
    with pytest.raises(ValueError):
        PatchGrid(10, 10, (1.0, 1.0), patch_size=0)


def test_choose_level_picks_the_coarsest_level_at_or_finer_than_target():
    img = np.full((1600, 1600, 3), 255, np.uint8)
    reader = ArrayReader(img, mpp=(0.25, 0.25), downsamples=(1, 4, 16, 32))
    assert choose_level(reader, 4.0).level == 2  # 16 * 0.25 = 4.0 exactly
    assert choose_level(reader, 2.0).level == 1  # 1.0 µm/px level, resized 2x
    assert choose_level(reader, 2.0).scale == (2.0, 2.0)
    assert choose_level(reader, 0.25).level == 0
    assert choose_level(reader, 4.0, mpp=0.5).level == 1  # override wins: 4 * 0.5 = 2.0 <= 4
    with pytest.raises(SlideError, match="coarser than the target"):
        choose_level(reader, 0.1)
    with pytest.raises(SlideError, match="no microns-per-pixel"):
        choose_level(ArrayReader(img, mpp=None), 4.0)
    with pytest.raises(SlideError, match="must be positive"):
        choose_level(reader, 4.0, mpp=-1)


def test_tissue_threshold_separates_stain_glass_ink_and_debris():
    thr = TissueThreshold(saturation=20, background_value=245)
    img = np.zeros((5, 1, 3), np.uint8)
    img[:, 0] = [PINK, GLASS, (40, 160, 140), (40, 40, 200), (20, 20, 20)]  # stain, glass, green/blue ink, black
    assert thr.mask(img)[:, 0].tolist() == [True, False, False, False, False]
    assert ink_mask(img)[:, 0].tolist() == [False, False, True, True, False]
    pale = np.full((1, 1, 3), 200, np.uint8)  # grey membrane of fat, unsaturated but darker than glass
    assert thr.mask(pale).all()


def test_tissue_mask_equals_its_definition_pixel_for_pixel():
    # every RGB colour once
    img = np.stack(np.meshgrid(*[np.arange(256, dtype=np.uint8)] * 3, indexing="ij"), -1).reshape(4096, 4096, 3)
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV).astype(np.int16)
    r, g, b = (img[..., i].astype(np.int16) for i in range(3))
    ink = (g - r > 15) | ((b - r > 50) & (b - g > 30))
    assert np.array_equal(ink_mask(img), ink)
    for thr in (TissueThreshold(20, 245), TissueThreshold(15, 20), TissueThreshold(25, 255, 0)):
        expected = (
            ((hsv[..., 1] >= thr.saturation) | (hsv[..., 2] <= thr.background_value - GREY_DROP))
            & (hsv[..., 2] >= thr.dark_value)
            & ~ink
        )
        got = thr.mask(img)
        assert got.dtype == bool and np.array_equal(got, expected)


def test_touches_equals_looking_at_each_box():
    rng = np.random.default_rng(3)
    tissue = TissueMask(rng.random((40, 60)) < 0.02, downsample=4.0, threshold=TissueThreshold(20))
    x0, y0 = rng.uniform(0, 260, 300), rng.uniform(0, 180, 300)
    x1, y1 = x0 + rng.uniform(1, 30, 300), y0 + rng.uniform(1, 30, 300)
    expected = [
        tissue.mask[
            max(int(np.floor(b / 4)) - 1, 0) : int(np.ceil(d / 4)) + 1,
            max(int(np.floor(a / 4)) - 1, 0) : int(np.ceil(c / 4)) + 1,
        ].any()
        for a, b, c, d in zip(x0, y0, x1, y1)
    ]
    got = tissue.touches(x0, y0, x1, y1)
    assert got.tolist() == expected and 0 < got.sum() < len(got)


def test_fit_threshold_is_clamped_and_learns_background():
    img = np.full((100, 100, 3), GLASS, np.uint8)
    img[:50] = PINK
    t = fit_threshold(img)
    assert 15 <= t.saturation <= 25 and t.background_value == 245
    assert fit_threshold(np.zeros((10, 10, 3), np.uint8)).saturation == 25  # all dark: no fit


def test_pad_patch_pads_white_at_right_and_bottom():
    part = np.zeros((30, 41, 3), np.uint8)
    out = pad_patch(part)
    assert out.shape == (50, 50, 3)
    assert (out[:30, :41] == 0).all() and (out[30:] == 255).all() and (out[:, 41:] == 255).all()


def test_compose_from_tiles_equals_slicing():
    rng = np.random.default_rng(1)
    level = rng.integers(0, 255, (130, 170, 3), dtype=np.uint8)
    tiles = lambda c, r: level[r * 32 : (r + 1) * 32, c * 48 : (c + 1) * 48]  # noqa: E731
    out = compose_from_tiles(17, 40, 100, 77, 48, 32, tiles)
    assert np.array_equal(out, level[40:117, 17:117])


def test_read_region_pads_outside_the_slide_with_white():
    img = np.zeros((100, 100, 3), np.uint8)
    reader = ArrayReader(img)
    out = reader.read_region(0, 80, -10, 40, 30)
    assert (out[10:, :20] == 0).all() and (out[:10] == 255).all() and (out[:, 20:] == 255).all()


def _slide_with_tissue_block():
    """1000x800 px at 1 µm/px: glass, with a tissue rectangle at [200, 600) x [100, 300)."""
    img = np.full((800, 1000, 3), GLASS, np.uint8)
    img[100:300, 200:600] = PINK
    img[150:160, 250:260] = PURPLE
    return img


def test_tiler_finds_exactly_the_tissue_patches_and_their_pixels():
    img = _slide_with_tissue_block()
    reader = ArrayReader(img, mpp=(1.0, 1.0), downsamples=(1, 2, 4))
    plan = plan_slide(reader, TilingSpec(target_mpp=4.0, min_tissue=0.5, thumbnail_size=256))
    assert plan.level.level == 2 and (plan.grid.cols, plan.grid.rows) == (5, 4)
    batches = list(iter_patches(reader, plan))
    cols = np.concatenate([b.cols for b in batches])
    rows = np.concatenate([b.rows for b in batches])
    # tissue spans target px x [50, 150), y [25, 75): patches (1,0), (2,0), (1,1), (2,1) hold >= half
    assert sorted(zip(cols.tolist(), rows.tolist())) == [(1, 0), (1, 1), (2, 0), (2, 1)]
    b = batches[0]
    assert b.pixels.shape[1:] == (50, 50, 3) and b.pixels.dtype == np.uint8
    i = [k for k in range(len(b)) if (b.cols[k], b.rows[k]) == (1, 1)][0]
    assert (b.x[i], b.y[i]) == (200, 200)
    assert b.tissue_fraction[i] == pytest.approx(0.5)  # rows 50..74 of 50..99 are tissue
    assert np.array_equal(b.pixels[i][:25, :], img[200:300:4, 200:400:4])


def test_tiler_is_independent_of_region_size_and_skips_glass_regions():
    img = _slide_with_tissue_block()
    reader = ArrayReader(img, mpp=(0.5, 0.5))
    results = []
    for region in (100, 400, 4000):
        plan = plan_slide(reader, TilingSpec(target_mpp=1.0, region_size=region))
        batches = list(iter_patches(reader, plan))
        results.append(
            sorted(
                zip(
                    np.concatenate([b.cols for b in batches]).tolist(),
                    np.concatenate([b.rows for b in batches]).tolist(),
                )
            )
        )
        if region == 100:
            assert len(plan.regions) < len(list(plan.grid.regions(1)))  # glass regions never read
    assert results[0] == results[1] == results[2] and len(results[0]) > 0


def test_neighbourhoods_read_region_by_region_equal_those_of_the_whole_slide():
    rng = np.random.default_rng(1)
    img = np.full((420, 640, 3), GLASS, np.uint8)
    for _ in range(12):  # tissue blobs of random colour and size, some touching region borders
        x, y, w, h = rng.integers(0, 600), rng.integers(0, 380), rng.integers(20, 160), rng.integers(20, 120)
        img[y : y + h, x : x + w] = rng.choice([PINK, PURPLE])
    img = np.clip(img + rng.integers(-12, 13, img.shape), 0, 255).astype(np.uint8)
    reader = ArrayReader(img, mpp=(0.5, 0.5))
    whole = plan_slide(reader, TilingSpec(target_mpp=1.0, patch_size=20, stride=20, region_size=4000))
    ref = list(iter_patches(reader, whole))
    assert len(ref) == 1 and len(ref[0]) > 50
    for cells in (3, 5):
        expected = neighbourhoods(ref[0].pixels, ref[0].rows, ref[0].cols, np.zeros(len(ref[0])), cells)
        at = {(c, r): i for i, (c, r) in enumerate(zip(ref[0].cols.tolist(), ref[0].rows.tolist()))}
        plan = plan_slide(reader, TilingSpec(target_mpp=1.0, patch_size=20, stride=20, region_size=60))
        batches = list(iter_patches(reader, plan, cells))
        assert len(batches) > 10  # many region borders
        got = {(c, r): b.pixels[i] for b in batches for i, (c, r) in enumerate(zip(b.cols.tolist(), b.rows.tolist()))}
        assert sum(map(len, batches)) == len(got) == len(at)  # each tissue patch once
        for key, pixels in got.items():
            assert pixels.shape == (20, 20, 6) and np.array_equal(pixels, expected[at[key]]), key
    with pytest.raises(ValueError, match="tile without overlap"):
        list(iter_patches(reader, plan_slide(reader, TilingSpec(target_mpp=1.0, stride=25)), 3))


def test_region_patches_without_tissue_are_dropped():
    reader = ArrayReader(np.full((400, 400, 3), GLASS, np.uint8), mpp=(4.0, 4.0))
    plan = plan_slide(reader, TilingSpec())
    assert plan.regions == [] and len(read_region_patches(reader, plan, (0, 0, 8, 8))) == 0


def test_too_small_slide_is_an_error():
    with pytest.raises(SlideError, match="smaller than half"):
        plan_slide(ArrayReader(np.zeros((16, 16, 3), np.uint8), mpp=(0.5, 0.5)))
