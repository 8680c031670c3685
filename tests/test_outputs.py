"""Summaries, maps, GeoJSON and the report, on small fake-but-real jobs written with the schema."""

from __future__ import annotations

import base64
import html
import json
import re
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from idcmap.jobs.jobdir.layout import JobDir
from idcmap.jobs.jobdir.schema import SUMMARIES, SlideMeta, write_failure, write_predictions
from idcmap.jobs.render.maps import (
    LEGEND_HEIGHT,
    MIN_IMAGE_WIDTH,
    colorize,
    heatmap_scale,
    idc_regions,
    mask_rings,
    probability_map,
)
from idcmap.jobs.render.outputs import build_outputs
from idcmap.jobs.render.report import write_report
from idcmap.jobs.render.summaries import build_summaries, patch_area_mm2

THRESHOLD = 0.5
MPP = 0.25
TARGET_MPP = 4.0
PATCH = 50
DS0 = TARGET_MPP / MPP  # 16 level-0 px per target px
PATCH0 = PATCH * DS0  # 800 level-0 px per patch
COLS, ROWS = 20, 15
WIDTH0, HEIGHT0 = COLS * 800 - 300, ROWS * 800 - 100  # last column/row partial
THUMB_DS = 32.0
PATCH_MM2 = (PATCH0 * MPP) ** 2 / 1e6  # 0.04 mm²: a 200 µm patch
SCRIPT_ID = "<script>alert('x')"


@dataclass
class FakeSlide:
    patient_id: str
    slide_id: str
    col: np.ndarray
    row: np.ndarray
    prob: np.ndarray
    blob: np.ndarray  # bool (ROWS, COLS): the main IDC region (not touching the edges)
    meta: SlideMeta


def _thumbnail(seed: int) -> str:
    rng = np.random.default_rng(seed)
    h, w = int(np.ceil(HEIGHT0 / THUMB_DS)), int(np.ceil(WIDTH0 / THUMB_DS))
    img = np.full((h, w, 3), 235, np.uint8)
    cv2.ellipse(img, (w // 2, h // 2), (w // 3, h // 3), 0, 0, 360, (170, 90, 200), -1)
    img = np.clip(img.astype(int) + rng.integers(-10, 10, img.shape), 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", img)
    assert ok
    return base64.b64encode(buf.tobytes()).decode()


def make_slide(
    job_dir: Path, patient_id: str, slide_id: str, seed: int, blob_rc=None, edge_blob: bool = False, min_area=None
) -> FakeSlide:
    """Write one predictions file: tissue in an ellipse of the grid, low probabilities, and an IDC
    blob (a rectangle of high probabilities with a one-patch hole) at ``blob_rc`` (row, col)."""
    rng = np.random.default_rng(seed)
    rr, cc = np.mgrid[0:ROWS, 0:COLS]
    tissue = ((rr - 7) / 7.5) ** 2 + ((cc - 10) / 10.5) ** 2 <= 1.0
    prob_grid = rng.uniform(0.01, 0.35, (ROWS, COLS)).astype(np.float32)
    blob = np.zeros((ROWS, COLS), bool)
    if blob_rc is not None:
        r0, c0 = blob_rc
        blob[r0 : r0 + 4, c0 : c0 + 5] = True
        blob[r0 + 1, c0 + 2] = False  # a hole
        prob_grid[blob] = rng.uniform(0.6, 0.99, blob.sum())
    if edge_blob:  # IDC in the partial last column: clipped polygons
        tissue[8:14, COLS - 1] = True  # 6 patches: above the default minimum area
        prob_grid[8:14, COLS - 1] = 0.9
    row, col = np.nonzero(tissue)
    prob = prob_grid[row, col]
    spec = {"target_mpp": TARGET_MPP, "batch_size": 64}
    if min_area is not None:
        spec["min_idc_area_mm2"] = min_area
    meta = SlideMeta(
        job_id="job-test",
        patient_id=patient_id,
        slide_id=slide_id,
        source=f"/slides/{slide_id}.svs",
        bundle_sha256="ab" * 32,
        model_version="idcnet@abababababab",
        threshold=THRESHOLD,
        job_spec=spec,
        width0=WIDTH0,
        height0=HEIGHT0,
        mpp=(MPP, MPP),
        target_mpp=TARGET_MPP,
        patch_size=PATCH,
        stride=PATCH,
        cols=COLS,
        rows=ROWS,
        level=2,
        thumbnail_downsample=THUMB_DS,
        thumbnail_jpeg=_thumbnail(seed),
    )
    n = len(row)
    table = pa.table(
        {
            "job_id": ["job-test"] * n,
            "patient_id": [patient_id] * n,
            "slide_id": [slide_id] * n,
            "x": np.round(col * PATCH * DS0).astype(np.int64),
            "y": np.round(row * PATCH * DS0).astype(np.int64),
            "col": col.astype(np.int32),
            "row": row.astype(np.int32),
            "level0_patch_size": np.full(n, PATCH0, np.float32),
            "tissue_fraction": rng.uniform(0.3, 1, n).astype(np.float32),
            "prob_idc": prob,
            "prob_patch": prob,
            "model_version": [meta.model_version] * n,
        }
    )
    write_predictions(JobDir(job_dir), table, meta)
    return FakeSlide(patient_id, slide_id, col, row, prob, blob, meta)


def make_job(job_dir: Path) -> dict[tuple[str, str], FakeSlide]:
    """P-A: two slides (one with IDC); P-B: small IDC below a per-job minimum area plus a failed
    slide; P-C (an id with <script>): IDC at the edge; P-D: its only slide failed."""
    slides = [
        make_slide(job_dir, "P-A", "A1", 1, blob_rc=(4, 6)),
        make_slide(job_dir, "P-A", "A2", 2),
        make_slide(job_dir, "P-B", "B1", 3, blob_rc=(8, 10), min_area=5.0),
        make_slide(job_dir, SCRIPT_ID, "C1", 4, blob_rc=(3, 3), edge_blob=True),
    ]
    write_failure(JobDir(job_dir), "P-B", "B2", "/slides/B2.svs", "unreadable: not a TIFF file")
    write_failure(JobDir(job_dir), "P-D", "D1", "/slides/D1.svs", "no tissue found")
    return {(s.patient_id, s.slide_id): s for s in slides}


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    job_dir = tmp_path_factory.mktemp("job")
    slides = make_job(job_dir)
    result = build_outputs(job_dir)
    return job_dir, slides, result


def _rows(job_dir):
    return pq.read_table(job_dir / "summaries.parquet").to_pylist()


def _expected_idc(slide: FakeSlide) -> int:
    """Patches at or above the threshold in 8-connected groups reaching the slide's minimum area
    (scipy's labelling, not the code under test)."""
    from scipy import ndimage

    grid = np.zeros((ROWS, COLS), bool)
    grid[slide.row, slide.col] = slide.prob >= THRESHOLD
    labels, _ = ndimage.label(grid, structure=np.ones((3, 3)))
    sizes = np.bincount(labels.ravel())
    min_area = slide.meta.job_spec.get("min_idc_area_mm2", 0.2)
    big = sizes * PATCH_MM2 >= min_area - 1e-9
    big[0] = False
    return int(big[labels].sum())


def _expected_stats(prob: np.ndarray, idc: int) -> dict:
    return {
        "tissue_patches": prob.size,
        "idc_patches": idc,
        "idc_fraction": idc / prob.size,
        "idc_area_mm2": idc * PATCH_MM2,
        "mean_prob": float(prob.astype(np.float64).mean()),
        "max_prob": float(prob.max()),
        "p95_prob": float(np.percentile(prob.astype(np.float64), 95)),
    }


# --- summaries -----------------------------------------------------------------------------------
def test_summaries_schema_and_one_row_per_slide_and_patient(job):
    job_dir, slides, result = job
    table = pq.read_table(job_dir / "summaries.parquet")
    assert table.schema.equals(SUMMARIES, check_metadata=False)
    rows = table.to_pylist()
    assert sorted((r["level"], r["patient_id"], r["slide_id"]) for r in rows) == sorted(
        [("slide", p, s) for p, s in slides]
        + [("slide", "P-B", "B2"), ("slide", "P-D", "D1")]
        + [("patient", p, None) for p in ("P-A", "P-B", "P-D", SCRIPT_ID)]
    )
    assert result["errors"] == []


def test_slide_rows_match_numpy(job):
    job_dir, slides, _ = job
    rows = {(r["patient_id"], r["slide_id"]): r for r in _rows(job_dir) if r["level"] == "slide"}
    for key, slide in slides.items():
        row, expected = rows[key], _expected_stats(slide.prob, _expected_idc(slide))
        assert row["patches"] == COLS * ROWS and row["slides"] == 1 and row["status"] == "done"
        for name, value in expected.items():
            assert row[name] == pytest.approx(value, rel=1e-6), (key, name)
    assert patch_area_mm2(slides[("P-A", "A1")].meta) == pytest.approx(0.04)
    # A1: 19 IDC patches = 0.76 mm² >= 0.2 -> IDC; A2: none; B1: its 0.76 mm² region is below its
    # job's 5 mm² minimum, so it is no region and counts no IDC patch
    assert rows[("P-A", "A1")]["idc_patches"] == 19 and rows[("P-B", "B1")]["idc_patches"] == 0
    assert rows[("P-B", "B1")]["max_prob"] >= 0.6
    assert [rows[k]["call"] for k in [("P-A", "A1"), ("P-A", "A2"), ("P-B", "B1")]] == ["IDC", "no IDC", "no IDC"]


def test_patient_row_aggregates_its_slides(job):
    job_dir, slides, _ = job
    patient = next(r for r in _rows(job_dir) if r["level"] == "patient" and r["patient_id"] == "P-A")
    both = np.concatenate([slides[("P-A", "A1")].prob, slides[("P-A", "A2")].prob])
    idc = sum(_expected_idc(slides[("P-A", s)]) for s in ("A1", "A2"))
    for name, value in _expected_stats(both, idc).items():
        assert patient[name] == pytest.approx(value, rel=1e-6), name
    assert (patient["slides"], patient["patches"], patient["call"], patient["status"], patient["error"]) == (
        2,
        2 * COLS * ROWS,
        "IDC",
        "done",
        None,
    )


def test_failed_slides_and_patients(job):
    job_dir, _, _ = job
    rows = {(r["level"], r["patient_id"], r["slide_id"]): r for r in _rows(job_dir)}
    b2 = rows[("slide", "P-B", "B2")]
    assert (b2["status"], b2["error"], b2["call"], b2["tissue_patches"]) == (
        "failed",
        "unreadable: not a TIFF file",
        None,
        None,
    )
    pb = rows[("patient", "P-B", None)]  # one of two slides failed: done, with the failure listed
    assert pb["status"] == "done" and pb["slides"] == 2 and "B2: unreadable: not a TIFF file" in pb["error"]
    pd_ = rows[("patient", "P-D", None)]  # all its slides failed
    assert pd_["status"] == "failed" and "D1: no tissue found" in pd_["error"] and pd_["call"] is None


def test_stale_failure_of_a_done_slide_is_ignored(tmp_path):
    make_slide(tmp_path, "P", "S", 7, blob_rc=(4, 4))
    write_failure(JobDir(tmp_path), "P", "S", "/slides/S.svs", "old error")
    rows = build_summaries(tmp_path).to_pylist()
    assert [(r["level"], r["status"], r["error"]) for r in rows] == [("patient", "done", None), ("slide", "done", None)]


# --- maps ----------------------------------------------------------------------------------------
def test_probability_map_has_each_probability_at_its_cell(job):
    job_dir, slides, _ = job
    slide = slides[("P-A", "A1")]
    prob = np.load(job_dir / "maps" / "P-A" / "A1" / "prob.npy")
    assert prob.shape == (ROWS, COLS) and prob.dtype == np.float32
    assert np.array_equal(prob[slide.row, slide.col], slide.prob)
    off = np.ones((ROWS, COLS), bool)
    off[slide.row, slide.col] = False
    assert off.any() and np.isnan(prob[off]).all()
    assert np.array_equal(probability_map((slide.col, slide.row, slide.prob), COLS, ROWS), prob, equal_nan=True)
    with pytest.raises(ValueError, match="outside"):
        probability_map((np.array([COLS]), np.array([0]), np.array([0.5])), COLS, ROWS)


def test_heatmap_and_overlay_pngs(job):
    job_dir, slides, _ = job
    slide = slides[("P-A", "A1")]
    out = job_dir / "maps" / "P-A" / "A1"
    heatmap = cv2.imread(str(out / "heatmap.png"))
    s = heatmap_scale(COLS, ROWS)
    assert heatmap.shape == (ROWS * s + LEGEND_HEIGHT, max(COLS * s, MIN_IMAGE_WIDTH), 3)
    r, c = 5, 7  # an IDC patch: its square in the heatmap has the colormap's colour
    expected = colorize(np.array([[slide.prob[(slide.row == r) & (slide.col == c)][0]]], np.float32))[0, 0]
    assert np.array_equal(heatmap[r * s + s // 2, c * s + s // 2], expected)
    assert (heatmap[0, 0] == 255).all()  # glass is white

    overlay = cv2.imread(str(out / "overlay.png"))
    thumb = cv2.imdecode(np.frombuffer(slide.meta.thumbnail_bytes(), np.uint8), cv2.IMREAD_COLOR)
    th, tw = thumb.shape[:2]
    assert overlay.shape == (th + LEGEND_HEIGHT, max(tw, MIN_IMAGE_WIDTH), 3)
    p = float(slide.prob[(slide.row == r) & (slide.col == c)][0])
    ty, tx = int((r + 0.5) * PATCH0 / THUMB_DS), int((c + 0.5) * PATCH0 / THUMB_DS)
    alpha = 0.25 + 0.5 * p
    blend = thumb[ty, tx] * (1 - alpha) + expected.astype(float) * alpha
    assert np.abs(overlay[ty, tx].astype(float) - blend).max() <= 1.0
    assert np.array_equal(overlay[2, 2], thumb[2, 2])  # no patch there: the thumbnail untouched


def _shoelace(ring) -> float:
    a = np.asarray(ring, float)
    return 0.5 * float(np.dot(a[:-1, 0], a[1:, 1]) - np.dot(a[:-1, 1], a[1:, 0]))


def _geojson(job_dir, patient, slide) -> dict:
    return json.loads((job_dir / "maps" / patient / slide / "idc.geojson").read_text())


def test_geojson_regions_are_closed_inside_the_slide_and_sized_right(job):
    job_dir, slides, _ = job
    for patient, slide_id in slides:
        doc = _geojson(job_dir, patient, slide_id)
        assert doc["type"] == "FeatureCollection"
        for f in doc["features"]:
            assert f["type"] == "Feature" and f["geometry"]["type"] == "Polygon"
            props = f["properties"]
            assert props["objectType"] == "annotation" and props["classification"]["name"] == "IDC"
            for ring in f["geometry"]["coordinates"]:
                a = np.asarray(ring)
                assert len(a) >= 4 and np.array_equal(a[0], a[-1])
                assert (a[:, 0] >= 0).all() and (a[:, 0] <= WIDTH0).all()
                assert (a[:, 1] >= 0).all() and (a[:, 1] <= HEIGHT0).all()
    assert _geojson(job_dir, "P-A", "A2")["features"] == []
    assert _geojson(job_dir, "P-B", "B1")["features"] == []  # its one region is below the minimum area
    (blob,) = _geojson(job_dir, "P-A", "A1")["features"]
    shell, *holes = blob["geometry"]["coordinates"]
    assert len(holes) == 1
    area_px = _shoelace(shell) + _shoelace(holes[0])  # holes run the other way round
    expected_px = slides[("P-A", "A1")].blob.sum() * PATCH0**2
    assert area_px == pytest.approx(expected_px, rel=0.10)
    assert blob["properties"]["measurements"]["IDC patches"] == 19
    assert blob["properties"]["measurements"]["Area mm^2"] == pytest.approx(19 * PATCH_MM2)
    # the edge region reaches past the slide in the grid and is clipped at width0
    edge = [
        f
        for f in _geojson(job_dir, SCRIPT_ID, "C1")["features"]
        if max(p[0] for p in f["geometry"]["coordinates"][0]) == WIDTH0
    ]
    assert len(edge) == 1


def test_region_outlines_follow_patch_edges_exactly():
    rng = np.random.default_rng(0)
    for _ in range(40):
        mask = rng.random((12, 12)) < rng.uniform(0.3, 0.8)
        n, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
        for k in range(1, n):
            ((outer, holes),) = mask_rings(labels == k, (labels == k).astype(np.int32)).values()
            closed = [np.vstack([r, r[:1]]) for r in [outer] + holes]
            area = abs(_shoelace(closed[0])) - sum(abs(_shoelace(h)) for h in closed[1:])
            assert area == (labels == k).sum()


def test_idc_regions_with_overlapping_patches_count_stride_cells(job):
    _, slides, _ = job
    meta = replace(slides[("P-A", "A1")].meta, stride=25, cols=2 * COLS, rows=2 * ROWS)
    prob = np.full((meta.rows, meta.cols), np.nan, np.float32)
    prob[10:14, 10:16] = 0.9  # 24 overlapping patches, each standing for a 25 px cell
    (region,) = idc_regions(prob, meta)["features"]
    cell0 = 25 * DS0
    assert _shoelace(region["geometry"]["coordinates"][0]) == pytest.approx(24 * cell0**2)
    xs = [p[0] for p in region["geometry"]["coordinates"][0]]
    assert min(xs) == pytest.approx(10 * cell0 + 12.5 * DS0)  # cell centred on the patch
    assert region["properties"]["measurements"]["Area mm^2"] == pytest.approx(24 * (cell0 * MPP) ** 2 / 1e6)


# --- report --------------------------------------------------------------------------------------
def patient_table_rows(page: str) -> list[list[str]]:
    """Cell texts of the rows of <table id="patients"> (unescaped)."""
    table = re.search(r'<table id="patients">(.*?)</table>', page, re.S).group(1)
    body = re.search(r"<tbody>(.*?)</tbody>", table, re.S).group(1)
    return [
        [html.unescape(re.sub(r"<[^>]+>", "", c)) for c in re.findall(r"<td[^>]*>(.*?)</td>", tr, re.S)]
        for tr in re.findall(r"<tr[^>]*>(.*?)</tr>", body, re.S)
    ]


def expected_patient_order(job_dir) -> list[str]:
    patients = [r for r in _rows(job_dir) if r["level"] == "patient"]
    done = sorted((r for r in patients if r["idc_fraction"] is not None), key=lambda r: -r["idc_fraction"])
    return [r["patient_id"] for r in done] + sorted(r["patient_id"] for r in patients if r["idc_fraction"] is None)


def test_report_lists_patients_by_idc_fraction_and_escapes_text(job):
    job_dir, _, result = job
    page = (job_dir / "report" / "index.html").read_text()
    assert result["report"] == job_dir / "report" / "index.html"
    rows = patient_table_rows(page)
    assert [r[0] for r in rows] == expected_patient_order(job_dir)
    fractions = [float(r[4]) for r in rows if r[4]]
    assert fractions == sorted(fractions, reverse=True) and len(fractions) == 3
    assert "<script>" not in page and html.escape(SCRIPT_ID) in page
    assert "unreadable: not a TIFF file" in page and "no tissue found" in page
    # self-contained: no external resources, every image inline
    assert not re.search(r'(src|href)="(?!data:)', page)
    assert page.count('src="data:image/jpeg;base64,') == 4


def test_report_uses_job_json_and_needs_no_maps(tmp_path):
    make_slide(tmp_path, "P", "S", 9, blob_rc=(4, 4))
    (tmp_path / "job.json").write_text(
        json.dumps(
            {
                "job_id": "night-42",
                "runs": [{"started": "2026-11-25T01:00:00Z", "finished": "2026-11-25T03:00:00Z"}],
                "bundle": {
                    "version": "idcnet@123",
                    "sha256": "f" * 64,
                    "threshold": 0.5,
                    "validation_metrics": {"roc_auc": 0.9321, "sensitivity": 0.85},
                },
            }
        )
    )
    page = write_report(tmp_path).read_text()
    for text in (
        "night-42",
        "2026-11-25T03:00:00Z",
        "idcnet@123",
        "f" * 64,
        "roc_auc",
        "0.9321",
        "no overlay (run idcmap report)",
    ):
        assert text in page, text
    assert [r[0] for r in patient_table_rows(page)] == ["P"]


# --- idempotence -----------------------------------------------------------------------------------
def _snapshot(job_dir: Path) -> dict[str, tuple[bytes, int]]:
    return {
        p.relative_to(job_dir).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(job_dir.rglob("*"))
        if p.is_file() and "predictions" not in p.parts
    }


def test_outputs_are_byte_identical_and_untouched_on_a_second_run(tmp_path):
    slides = make_job(tmp_path)
    first = build_outputs(tmp_path)
    before = _snapshot(tmp_path)
    assert {"summaries.parquet", "report/index.html", "maps/P-A/A1/idc.geojson"} <= set(before)
    second = build_outputs(tmp_path)
    assert len(first["maps_built"]) == 4 and second["maps_built"] == [] and len(second["maps_skipped"]) == 4
    assert _snapshot(tmp_path) == before  # same bytes, nothing rewritten

    forced = build_outputs(tmp_path, force=True)  # rebuilt from scratch: still the same bytes
    assert len(forced["maps_built"]) == 4
    assert {k: v[0] for k, v in _snapshot(tmp_path).items()} == {k: v[0] for k, v in before.items()}

    # a re-scored slide (new predictions) gets new maps and summary numbers
    make_slide(tmp_path, "P-A", "A2", 2, blob_rc=(2, 2))
    third = build_outputs(tmp_path)
    assert third["maps_built"] == [tmp_path / "maps" / "P-A" / "A2"]
    assert len(_geojson(tmp_path, "P-A", "A2")["features"]) == 1
    assert slides  # the other slides kept their maps
    assert (tmp_path / "maps/P-A/A1/idc.geojson").read_bytes() == before["maps/P-A/A1/idc.geojson"][0]


def test_the_same_inputs_in_another_folder_give_the_same_bytes(job, tmp_path):
    job_dir = job[0]
    make_job(tmp_path)
    build_outputs(tmp_path)
    ours, theirs = _snapshot(job_dir), _snapshot(tmp_path)
    assert ours.keys() == theirs.keys()
    differ = [k for k in ours if ours[k][0] != theirs[k][0] and not k.endswith("inputs.json")]
    assert differ == []


def test_a_slide_whose_maps_fail_is_reported_and_the_others_still_built(tmp_path):
    make_slide(tmp_path, "P", "good", 5, blob_rc=(4, 4))
    bad = make_slide(tmp_path, "P", "bad", 6)
    table = pq.read_table(tmp_path / "predictions" / "P" / "bad.parquet")
    path = write_predictions(
        JobDir(tmp_path), table, replace(bad.meta, thumbnail_jpeg=base64.b64encode(b"junk").decode())
    )
    result = build_outputs(tmp_path)
    assert len(result["errors"]) == 1 and str(path) in result["errors"][0] and "JPEG" in result["errors"][0]
    assert result["maps_built"] == [tmp_path / "maps" / "P" / "good"]
    page = result["report"].read_text()
    assert page.count('src="data:image/jpeg;base64,') == 1 and "no overlay" in page


def test_a_job_whose_slides_all_failed_still_gets_a_report(tmp_path):
    write_failure(JobDir(tmp_path), "P1", "S1", "/slides/S1.svs", "slide has no microns-per-pixel metadata")
    result = build_outputs(tmp_path)
    assert result["maps_built"] == [] and result["errors"] == []
    rows = patient_table_rows(result["report"].read_text())
    assert [(r[0], r[8]) for r in rows] == [("P1", "failed")]
    assert "no microns-per-pixel metadata" in rows[0][9]


def test_a_corrupt_predictions_file_is_named_and_the_rest_is_built(tmp_path):
    make_slide(tmp_path, "P", "S", 5)
    bad = tmp_path / "predictions" / "P" / "T.parquet"
    bad.write_bytes(b"not parquet")
    result = build_outputs(tmp_path)
    assert len(result["errors"]) == 1 and result["errors"][0].startswith(f"{bad}: ")
    rows = {r["slide_id"]: r for r in pq.read_table(result["summaries"]).to_pylist() if r["level"] == "slide"}
    assert rows["S"]["status"] == "done"
    assert rows["T"]["status"] == "failed" and rows["T"]["error"].startswith(f"{bad}: ")


# --- a real slide: the example's tiling and thumbnail, probabilities from its ground truth ------
def test_regions_on_a_real_slide_cover_exactly_its_ground_truth_idc_patches(tmp_path):
    """Tile examples/slides/patient-8863.tiff, score each patch 0.9 where the ground-truth mask says IDC
    (0.1 elsewhere): the GeoJSON polygons must hold exactly those patches' centres, in level-0
    pixels, and the overlay must be at the reader's thumbnail size."""
    from idcmap.slide_tiling import TilingSpec, iter_patches, open_slide, plan_slide

    from .conftest import REPO

    slide = REPO / "examples" / "slides" / "patient-8863.tiff"
    truth = cv2.imread(str(REPO / "examples" / "ground-truth" / "patient-8863-idc-mask.png"), cv2.IMREAD_GRAYSCALE)
    if truth is None or not slide.exists():
        pytest.skip(f"example slide or mask absent under {slide.parent}")
    spec = TilingSpec()
    with open_slide(slide) as reader:
        plan = plan_slide(reader, spec)
        batches = list(iter_patches(reader, plan))
        thumb, thumb_ds = reader.get_thumbnail(1024)
        width0, height0 = reader.dimensions
    col = np.concatenate([b.cols for b in batches])
    row = np.concatenate([b.rows for b in batches])
    x, y = np.concatenate([b.x for b in batches]), np.concatenate([b.y for b in batches])
    is_idc = (row < truth.shape[0]) & (col < truth.shape[1])
    is_idc[is_idc] = truth[row[is_idc], col[is_idc]] == 255
    prob = np.where(is_idc, 0.9, 0.1).astype(np.float32)
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(thumb, cv2.COLOR_RGB2BGR))
    meta = SlideMeta(
        job_id="real",
        patient_id="8863",
        slide_id="patient-8863",
        source=str(slide),
        bundle_sha256="",
        model_version="truth",
        threshold=0.5,
        job_spec={},
        width0=width0,
        height0=height0,
        mpp=tuple(plan.level.mpp0),
        target_mpp=spec.target_mpp,
        patch_size=spec.patch_size,
        stride=spec.stride,
        cols=plan.grid.cols,
        rows=plan.grid.rows,
        level=plan.level.level,
        thumbnail_downsample=thumb_ds,
        thumbnail_jpeg=base64.b64encode(jpeg.tobytes()).decode(),
    )
    n = len(prob)
    write_predictions(
        JobDir(tmp_path),
        pa.table(
            {
                "job_id": ["real"] * n,
                "patient_id": ["8863"] * n,
                "slide_id": ["patient-8863"] * n,
                "x": x,
                "y": y,
                "col": col,
                "row": row,
                "level0_patch_size": np.full(n, plan.grid.level0_patch_size, np.float32),
                "tissue_fraction": np.ones(n, np.float32),
                "prob_idc": prob,
                "prob_patch": prob,
                "model_version": ["truth"] * n,
            }
        ),
        meta,
    )
    assert build_outputs(tmp_path)["errors"] == []
    assert is_idc.sum() > 100

    features = _geojson(tmp_path, "8863", "patient-8863")["features"]
    size0 = plan.grid.level0_patch_size

    def inside(px, py):
        for f in features:
            shell, *holes = [np.asarray(r, np.float32) for r in f["geometry"]["coordinates"]]
            if cv2.pointPolygonTest(shell, (px, py), False) > 0 and not any(
                cv2.pointPolygonTest(h, (px, py), False) >= 0 for h in holes
            ):
                return True
        return False

    covered = np.array([inside(float(a + size0 / 2), float(b + size0 / 2)) for a, b in zip(x, y)])
    assert np.array_equal(covered, is_idc)
    summary = next(r for r in _rows(tmp_path) if r["level"] == "slide")
    assert summary["idc_patches"] == is_idc.sum()
    assert summary["idc_area_mm2"] == pytest.approx(is_idc.sum() * (50 * 4.0 / 1000) ** 2)
    overlay = cv2.imread(str(tmp_path / "maps" / "8863" / "patient-8863" / "overlay.png"))
    assert overlay.shape[:2] == (thumb.shape[0] + LEGEND_HEIGHT, max(thumb.shape[1], MIN_IMAGE_WIDTH))
