"""`idcmap serve` over HTTP on 127.0.0.1: every route and its errors, against the job's own files;
traversal probes; uploads; a pseudonymised job; the token; a job being scored while served."""

from __future__ import annotations

import http.client
import json
import math
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from idcmap.jobs.cli import cli
from idcmap.jobs.pseudonym import patient_pseudonym, slide_pseudonym
from idcmap.jobs.serve.app import App, make_server
from idcmap.model import make_backend
from idcmap.slide_tiling import TilingSpec, iter_patches, open_slide, plan_slide

from .conftest import REPO
from .conftest import SERVE_KEY as KEY

SLIDES = REPO / "examples" / "slides"
SLIDE = ("patient-8916", "patient-8916")
API = "/api/jobs/job/slides/patient-8916/patient-8916"
TOKEN = "a-test-token-of-32-characters-00"


def run(*args, env=None):
    return CliRunner().invoke(cli, [str(a) for a in args], env=env)


def files_of(folder: Path) -> dict:
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


class Client:
    """Raw HTTP to the server: the path is sent exactly as given (no normalisation)."""

    def __init__(self, port: int):
        self.port = port

    def request(self, path: str, method: str = "GET", body: bytes | None = None, headers: dict | None = None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()

    def json(self, path: str, **kw):
        status, _, body = self.request(path, **kw)
        return status, json.loads(body)

    def upload(self, data: bytes, filename: str = "patch.png", mpp: str | None = None, headers: dict | None = None):
        boundary = uuid.uuid4().hex
        parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{filename}"\r\n'
                 f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n"]  # fmt: skip
        if mpp is not None:
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="mpp"\r\n\r\n{mpp}\r\n'.encode())
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        type_ = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        return self.json("/api/predict", method="POST", body=body, headers=type_ | (headers or {}))


def start(app: App):
    server = make_server(app, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, Client(server.server_address[1])


@pytest.fixture(scope="module")
def served(served_jobs):

    before = [files_of(j) for j in served_jobs]
    app = App(served_jobs)
    server, client = start(app)
    yield client
    server.shutdown()
    app.tiles.close()
    assert [files_of(j) for j in served_jobs] == before, "the server wrote into a job folder"


def test_index_lists_jobs_patients_slides_and_summaries_without_paths(served, served_jobs):
    status, headers, body = served.request("/")
    page = body.decode()
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    rows = pq.read_table(served_jobs[0] / "summaries.parquet").to_pylist()
    job_part = page[page.index('data-job="job"') : page.index('data-job="private"')]
    patients, slides = job_part.split("<h3>Slides</h3>")
    for row in rows:  # each patient in the patients table, each slide in the slides table (linked)
        part = patients if row["level"] == "patient" else slides
        assert f'data-sort="{row["idc_fraction"]}">{row["idc_fraction"]:.4f}<' in part
        assert f'data-sort="{row["tissue_patches"]}">{row["tissue_patches"]:,}<' in part
        assert f">{row['call']}<" in part
        if row["level"] == "slide":
            assert f'href="/jobs/job/slides/{row["patient_id"]}/{row["slide_id"]}"' in slides
    assert str(SLIDES) not in page and ".tiff" not in page
    assert "default-src 'self'" in headers["Content-Security-Policy"]


def test_api_jobs_reports_each_jobs_progress(served):
    status, progress = served.json("/api/jobs")
    assert status == 200
    by_job = {p["job"]: p for p in progress}
    assert (by_job["job"]["done"], by_job["job"]["slides"], by_job["job"]["running"]) == (2, 2, False)
    assert by_job["job"]["patches"] == 1150 and by_job["private"]["done"] == 1


def test_info_tiles_and_overlay_follow_the_slide_and_its_predictions(served, served_jobs):
    status, info = served.json(f"{API}/info")
    reader = open_slide(SLIDES / "patient-8916.tiff")
    w, h = reader.dimensions
    assert status == 200 and (info["width"], info["height"]) == (w, h)
    assert info["max_level"] == math.ceil(math.log2(max(w, h)))
    # the full-resolution tile (0, 0) is the slide's own pixels, JPEG-encoded
    status, headers, tile = served.request(f"{API}/tiles/{info['max_level']}/0_0.jpg")
    assert status == 200 and headers["Content-Type"] == "image/jpeg"
    pixels = cv2.cvtColor(cv2.imdecode(np.frombuffer(tile, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    expected = reader.read_region(0, 0, 0, 256, 256)
    assert pixels.shape == (256, 256, 3) and np.abs(pixels.astype(int) - expected).mean() < 4
    assert served.request(f"{API}/tiles/{info['max_level']}/0_0.jpg")[2] == tile  # from the cache
    assert served.request(f"{API}/tiles/0/0_0.jpg")[0] == 200  # the 1-px level
    edge = served.request(f"{API}/tiles/{info['max_level']}/{w // 256}_{h // 256}.jpg")[2]
    assert cv2.imdecode(np.frombuffer(edge, np.uint8), cv2.IMREAD_COLOR).shape[:2] == (h % 256, w % 256)
    for outside in (f"{info['max_level'] + 1}/0_0", f"{info['max_level']}/{w // 256 + 1}_0", "3/0_-1"):
        assert served.request(f"{API}/tiles/{outside}.jpg")[0] == 404
    # the overlay: one RGBA pixel per grid cell, opaque where a tissue patch was scored
    table = pq.read_table(served_jobs[0] / "predictions" / "patient-8916" / "patient-8916.parquet")
    png = served.request(f"{API}/overlay.png")[2]
    overlay = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    meta_cols, meta_rows = table["col"].to_numpy(), table["row"].to_numpy()
    assert overlay.shape == (34, 24, 4) and (overlay[..., 3] > 0).sum() == table.num_rows
    assert (overlay[meta_rows, meta_cols, 3] == 255).all()
    assert info["overlay_box"] == [0.0, 0.0, 24 * 50.0, 34 * 50.0]
    geojson = json.loads((served_jobs[0] / "maps" / "patient-8916" / "patient-8916" / "idc.geojson").read_text())
    assert served.json(f"{API}/regions.geojson") == (200, geojson)


def test_a_click_finds_the_patch_under_it(served, served_jobs):
    rows = pq.read_table(served_jobs[0] / "predictions" / "patient-8916" / "patient-8916.parquet").to_pylist()
    for r in rows[::40]:
        status, answer = served.json(f"{API}/patch?x={r['x'] + 12.5}&y={r['y'] + 49.9}")
        assert status == 200
        assert answer["patch"] == {
            k: r[k] for k in ("x", "y", "col", "row", "tissue_fraction", "prob_idc", "prob_patch")
        }
    assert served.json(f"{API}/patch?x=5&y=1650") == (200, {"patch": None})  # glass
    assert served.json(f"{API}/patch?x=5") == (400, {"error": "give the level-0 point as ?x=..&y=.."})


def test_unknown_ids_and_traversal_probes_are_404(served):
    probes = [
        "/jobs/job/slides/patient-8916/nope", "/jobs/nope/slides/patient-8916/patient-8916", "/api/jobs/job/x",
        "/static/../app.py", "/static/..%2fapp.py", "/static/%2e%2e/app.py", "/static/%2E%2E%2Fapp.py",
        "/static/openseadragon/../../app.py", "/static//etc/passwd", "//etc/passwd", "/static/..\\app.py",
        "/static/%5c..%5capp.py", "/jobs/job/slides/..%2F..%2F/etc", f"{API}/../../../../etc/passwd",
        "/api/jobs/job/slides/patient-8916/%2e%2e/info", "/static/%00", "/etc/passwd", "/static/jobs.py",
        f"{API}/tiles/11/0_0.jpg/../../../../../../etc/passwd", "/api/jobs/job/slides/job.json/x/info",
    ]  # fmt: skip
    for path in probes:
        status, _, body = served.request(path)
        assert status == 404, (path, status)
        assert b"root:" not in body and b"import" not in body


def test_predict_scores_a_patch_like_the_backend(served, bundle):
    patch_file = sorted((REPO.parent / "shared" / "data" / "idc" / "patients").glob("*/1/*.png"))[:1]
    if not patch_file:
        pytest.skip("real data not available: ../shared/data/idc/patients is absent")
    data = patch_file[0].read_bytes()
    status, answer = served.upload(data)
    rgb = cv2.cvtColor(cv2.imread(str(patch_file[0])), cv2.COLOR_BGR2RGB)
    expected = make_backend(bundle, "onnx").predict(bundle.inputs(rgb[None], [0], [0], [0]))[0]  # a lone patch
    assert status == 200 and answer["kind"] == "patch" and answer["model_version"] == bundle.version
    assert abs(answer["prob_idc"] - expected) < 1e-5
    assert answer["call"] == ("IDC" if expected >= bundle.threshold else "no IDC")


def test_predict_tiles_a_larger_image_at_its_mpp(served, bundle, tmp_path):
    image = cv2.imread(str(SLIDES / "patient-8916.tiff"))[:400, 700:1200]
    data = cv2.imencode(".png", image)[1].tobytes()
    status, answer = served.upload(data, "region.png")
    assert status == 400 and answer["error"].startswith("region.png: 500 x 400 px is not one 50x50 patch; give its")
    status, answer = served.upload(data, "region.png", mpp="4.0")
    cv2.imwrite(str(tmp_path / "region.png"), image)
    with open_slide(tmp_path / "region.png") as reader:
        expected = sum(len(b.x) for b in iter_patches(reader, plan_slide(reader, TilingSpec(mpp=4.0))))
    assert status == 200 and len(answer["patches"]) == expected > 20
    assert answer["prob_idc"] == max(p["prob_idc"] for p in answer["patches"])
    assert answer["idc_patches"] == sum(p["prob_idc"] >= bundle.threshold for p in answer["patches"])


def test_bad_uploads_get_a_400_with_one_line(served):
    bomb = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + (100_000).to_bytes(4, "big") * 2 + b"\x08\x02\x00\x00\x00"
    cases = [
        (served.upload(b""), "patch.png: the upload is empty"),
        (served.upload(b"not an image at all"), "patch.png: not a PNG or JPEG image"),
        (served.upload(bomb), "patch.png: declares 100000 x 100000 px, more than 67,108,864 px"),
        (served.upload(b"x", mpp="abc"), "mpp 'abc' is not a number"),
        (served.json("/api/predict", method="POST", body=b"{}", headers={"Content-Type": "application/json"}),
         "send the image as multipart/form-data (field 'image')"),
    ]  # fmt: skip
    for (status, answer), message in cases:
        assert (status, answer) == (400, {"error": message})
    status, answer = served.json("/api/predict", method="POST", body=b"", headers={"Content-Length": str(64 << 20)})
    assert (status, answer) == (413, {"error": "upload of 67,108,864 bytes: the limit is 20,971,520"})


def test_a_pseudonymised_job_shows_only_pseudonyms_and_its_thumbnail(served, served_jobs):
    p, s = (
        patient_pseudonym(KEY.encode(), "patient-8916"),
        slide_pseudonym(KEY.encode(), "patient-8916", "patient-8916"),
    )
    page = served.request("/")[2].decode()
    assert f'href="/jobs/private/slides/{p}/{s}"' in page
    api = f"/api/jobs/private/slides/{p}/{s}"
    texts = [page, served.request(f"/jobs/private/slides/{p}/{s}")[2].decode(), served.request("/api/jobs")[2].decode()]
    status, info = served.json(f"{api}/info")
    texts.append(json.dumps(info))
    assert status == 200 and "width" not in info and info["width0"] == 1200
    assert info["slide_problem"] == "the job is pseudonymised: it holds no slide path"
    private_part = page[page.index('data-job="private"') :]
    assert all("8916" not in t for t in [private_part, *texts[1:2], json.dumps(info)])
    status, headers, thumbnail = served.request(f"{api}/thumbnail.jpg")
    assert status == 200 and cv2.imdecode(np.frombuffer(thumbnail, np.uint8), cv2.IMREAD_COLOR) is not None
    assert served.request(f"{api}/tiles/11/0_0.jpg")[0] == 404
    assert served.request("/jobs/private/slides/patient-8916/patient-8916")[0] == 404


def test_a_token_is_needed_on_every_request_when_set(served_jobs):
    server, client = start(App(served_jobs[:1], token=TOKEN))
    try:
        for path in ("/", "/api/jobs", f"{API}/info", "/static/style.css", "/predict"):
            assert client.request(path)[0] == 401
            assert client.request(path, headers={"Authorization": f"Bearer {TOKEN}"})[0] == 200
            assert client.request(path, headers={"Authorization": "Bearer wrong-token-of-some-length"})[0] == 401
        status, headers, _ = client.request(f"/jobs/job/slides/patient-8916/patient-8916?token={TOKEN}")
        assert status == 303 and headers["Location"] == "/jobs/job/slides/patient-8916/patient-8916"
        cookie = headers["Set-Cookie"].split(";")[0]
        assert "HttpOnly" in headers["Set-Cookie"] and "SameSite=Strict" in headers["Set-Cookie"]
        assert client.request(headers["Location"], headers={"Cookie": cookie})[0] == 200
        assert client.request("/?token=nope")[0] == 401
    finally:
        server.shutdown()


def test_serve_refuses_other_hosts_without_a_token_and_takes_none_on_the_command_line(served_jobs, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "IDCMAP_SERVE_TOKEN"}
    result = run("serve", served_jobs[0], "--host", "0.0.0.0", env={"IDCMAP_SERVE_TOKEN": None})
    assert result.exit_code == 1 and result.output == (
        "Error: --host 0.0.0.0 is reachable from other machines: give an access token "
        "(--token-file FILE or IDCMAP_SERVE_TOKEN); it is never taken on the command line\n"
    )
    short = tmp_path / "token"
    short.write_text("abc\n")
    result = run("serve", served_jobs[0], "--host", "0.0.0.0", "--token-file", short)
    assert result.exit_code == 1 and "the token is too short" in result.output
    assert "No such option '--token'" in run("serve", served_jobs[0], "--token", TOKEN).output
    result = run("serve", REPO / "examples", env=env)
    assert (
        result.exit_code == 1
        and result.output == f"Error: {REPO / 'examples'}: not an idcmap job folder (no job.json)\n"
    )


def test_a_job_being_scored_is_served_with_its_progress(rebuilt, tmp_path, served_jobs):
    job = tmp_path / "running"
    cmd = [sys.executable, "-m", "idcmap", "score", str(rebuilt / "slides"), "--out", str(job), "--num-cpus", "1"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not (job / "job.json").exists():
            time.sleep(0.1)
        server, client = start(App([job, served_jobs[0]]))
        seen = []
        while proc.poll() is None and time.time() < deadline:
            progress = {p["job"]: p for p in client.json("/api/jobs")[1]}["running"]
            seen.append(progress)
            assert client.request("/")[0] == 200
            assert client.request(f"{API}/tiles/9/0_0.jpg")[0] == 200  # the other job's slide meanwhile
            time.sleep(0.5)
        server.shutdown()
    finally:
        _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-2000:]
    running = [p for p in seen if p["running"]]
    assert running and all(p["slides"] == 10 for p in running)
    assert any(0 < p["done"] < 10 for p in running), "never saw the job part-way"
    assert any(p["patches_per_s"] for p in running if p["done"])


def test_a_failed_slide_shows_its_reason_without_the_folder(tmp_path, ray_session):
    slides = tmp_path / "secret-folder"
    slides.mkdir()
    (slides / "empty.tiff").write_bytes(b"")
    assert run("score", slides, "--out", tmp_path / "failing").exit_code == 1
    app = App([tmp_path / "failing"])
    server, client = start(app)
    try:
        page = client.request("/")[2].decode()
    finally:
        server.shutdown()
    assert "empty.tiff: file is empty (0 bytes)" in page and "secret-folder" not in page
    assert 'class="status-failed"' in page
