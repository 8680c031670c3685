"""The HTML report rendered by headless Chromium: its patients table and a screenshot."""

from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

from idcmap.jobs.render.outputs import build_outputs
from idcmap.jobs.render.report import PATIENT_COLUMNS, format_value, patient_order

from .test_outputs import SCRIPT_ID, make_job

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="headless Chromium not found on PATH (apt-get install chromium; .ci/run installs it when missing)",
)


def chromium(tmp_path, url: str, *args: str) -> subprocess.CompletedProcess:
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        *args,
        url,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"chromium failed ({done.returncode}): {done.stderr[-2000:]}"
    return done


class TableRows(HTMLParser):
    """Cell texts of each body row of the table with a given id."""

    def __init__(self, table_id: str):
        super().__init__()
        self.table_id, self.depth, self.in_body = table_id, 0, False
        self.rows: list[list[str]] = []
        self.cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table" and (self.depth or dict(attrs).get("id") == self.table_id):
            self.depth += 1
        elif self.depth == 1 and tag == "tbody":
            self.in_body = True
        elif self.depth == 1 and self.in_body and tag == "tr":
            self.rows.append([])
        elif self.depth == 1 and self.in_body and tag == "td":
            self.cell = []

    def handle_endtag(self, tag):
        if tag == "table" and self.depth:
            self.depth -= 1
        elif tag == "tbody":
            self.in_body = False
        elif tag == "td" and self.cell is not None:
            self.rows[-1].append("".join(self.cell).strip())
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)


def test_report_renders_in_headless_chromium(tmp_path):
    job_dir = tmp_path / "job"
    make_job(job_dir)
    report = build_outputs(job_dir)["report"]
    url = report.resolve().as_uri()

    dom = chromium(tmp_path, url, "--dump-dom").stdout
    parser = TableRows("patients")
    parser.feed(dom)
    patients = patient_order(
        [r for r in pq.read_table(job_dir / "summaries.parquet").to_pylist() if r["level"] == "patient"]
    )
    expected = [[format_value(r[key], kind) for _, key, kind in PATIENT_COLUMNS] for r in patients]
    assert parser.rows == expected
    assert [r[0] for r in parser.rows][:1] == [SCRIPT_ID]  # the highest IDC fraction, shown as text
    assert "<script>alert" not in dom  # escaped, so never an element
    # what a reader needs first: patients and their overlays; job, spec, versions and metrics folded away last
    about = dom.index('<details id="about">')
    assert dom.index('id="patients"') < dom.index("<h2>IDC overlays</h2>") < dom.index('id="slides"') < about
    assert about < dom.index("<h2>Job</h2>") < dom.index("<h2>Model</h2>") < dom.index("</details>")

    shot = tmp_path / "report.png"
    chromium(tmp_path, url, f"--screenshot={shot}", "--window-size=1280,2000", "--hide-scrollbars")
    image = cv2.imread(str(shot), cv2.IMREAD_COLOR)
    assert image is not None and image.shape[:2] == (2000, 1280)
    assert image.std() > 20, "the screenshot is blank"
    hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)
    coloured = np.count_nonzero((hsv[..., 1] > 120) & (hsv[..., 2] > 120))
    assert coloured > 5000, f"only {coloured} coloured pixels: the overlays did not render"
