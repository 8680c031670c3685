"""``JOB_DIR/report/index.html``: one self-contained page for the job (works offline).

Everything is inline: CSS in a ``<style>`` element, each slide's overlay as a downscaled JPEG data
URI. All text from the job (ids, errors, spec values) is escaped. The page holds no time of its own
making: times come from ``job.json``, so rebuilding it from unchanged inputs gives the same bytes.

Sections, in the order a reader needs them: ``<table id="patients">`` sorted by IDC fraction
(highest first; failed patients last), each patient's overlays, ``<table id="slides">``,
``<table id="failed">``; then, folded away (``<details id="about">``), the job (id, runs, counts,
spec, package versions) and the model (version, hash, threshold, its out-of-fold or validation
metrics).
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path

import cv2
import pyarrow.parquet as pq

from idcmap.jobs.jobdir.info import read_job
from idcmap.jobs.jobdir.layout import JobDir, write_bytes_atomic
from idcmap.jobs.jobdir.schema import predictions_problem, read_failures
from idcmap.jobs.render.summaries import build_summaries, load_meta, min_idc_area_mm2

OVERLAY_MAX_SIDE = 480
JPEG_QUALITY = 80

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd}h3{font-size:15px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f2f2f2}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.call-IDC td.call{color:#b00;font-weight:600}tr.status-failed{background:#fff3f3}
dl.kv{display:grid;grid-template-columns:max-content auto;gap:2px 16px;font-size:13px}
dl.kv dt{font-weight:600}dl.kv dd{margin:0;word-break:break-all}
figure{display:inline-block;margin:6px 12px 12px 0;vertical-align:top}
figcaption{font-size:12px;color:#555}img{border:1px solid #ccc;max-width:100%}
.muted{color:#777}details#about{margin-top:28px}details#about summary{cursor:pointer;font-weight:600}
"""

PATIENT_COLUMNS = [  # (header, summaries column, format)
    ("Patient", "patient_id", "text"),
    ("Slides", "slides", "int"),
    ("Tissue patches", "tissue_patches", "int"),
    ("IDC patches", "idc_patches", "int"),
    ("IDC fraction", "idc_fraction", "fraction"),
    ("IDC area (mm²)", "idc_area_mm2", "area"),
    ("Max prob", "max_prob", "prob"),
    ("Call", "call", "text"),
    ("Status", "status", "text"),
    ("Error", "error", "text"),
]
SLIDE_COLUMNS = PATIENT_COLUMNS[:1] + [("Slide", "slide_id", "text")] + PATIENT_COLUMNS[2:]


def esc(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def format_value(value, kind: str) -> str:
    """Text of a table cell (unescaped): '' for missing values, fixed decimals for numbers."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if kind == "int":
        return f"{int(value):,}"
    if kind == "fraction":
        return f"{value:.4f}"
    if kind == "area":
        return f"{value:.3f}"
    if kind == "prob":
        return f"{value:.3f}"
    return str(value)


def patient_order(rows: list[dict]) -> list[dict]:
    """Patient rows by IDC fraction, highest first; rows without one (failed) last; then by id."""
    return sorted(rows, key=lambda r: (r["idc_fraction"] is None, -(r["idc_fraction"] or 0.0), r["patient_id"]))


def _table(table_id: str, columns, rows: list[dict]) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h, _, _ in columns)
    body = []
    for r in rows:
        cells = "".join(
            f'<td class="{"num" if kind != "text" else esc(key)}">{esc(format_value(r.get(key), kind))}</td>'
            for _, key, kind in columns
        )
        body.append(
            f'<tr class="call-{esc((r.get("call") or "none").replace(" ", "-"))} '
            f'status-{esc(r.get("status"))}">{cells}</tr>'
        )
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _kv(pairs) -> str:
    items = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in pairs if v not in (None, ""))
    return f'<dl class="kv">{items}</dl>'


def _json_text(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def overlay_data_uri(png_path: Path) -> str | None:
    """The overlay downscaled to OVERLAY_MAX_SIDE as a JPEG data URI; None when there is none."""
    image = cv2.imread(str(png_path), cv2.IMREAD_COLOR) if png_path.exists() else None
    if image is None:
        return None
    h, w = image.shape[:2]
    scale = min(1.0, OVERLAY_MAX_SIDE / max(h, w))
    if scale < 1.0:
        image = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode() if ok else None


def load_summary_rows(job_dir) -> list[dict]:
    path = JobDir(job_dir).summaries
    table = pq.read_table(path) if path.exists() else build_summaries(job_dir)
    return table.to_pylist()


def _job_section(job: dict, first_meta, patients, slides, failures) -> str:
    runs = job.get("runs") or []
    done = sum(1 for s in slides if s["status"] == "done")
    known = len(job.get("slides") or []) or len(slides)
    pairs = [
        ("Job", job.get("job_id") or (first_meta.job_id if first_meta else None)),
        ("First run started", runs[0].get("started") if runs else None),
        ("Last run finished", runs[-1].get("finished") if runs else None),
        ("Runs", len(runs) or None),
        ("Patients", len(patients)),
        ("Slides done", done),
        ("Slides failed", len(failures)),
        ("Slides pending", max(0, known - done - len(failures)) or None),
        ("Tissue patches", f"{sum(s['tissue_patches'] or 0 for s in slides):,}"),
    ]
    spec = job.get("spec") or (first_meta.job_spec if first_meta else {}) or {}
    spec_html = _kv((k, _json_text(v)) for k, v in sorted(spec.items())) if spec else ""
    versions = job.get("versions") or {}
    versions_html = f"<h3>Package versions</h3>{_kv(sorted(versions.items()))}" if versions else ""
    return f"<h2>Job</h2>{_kv(pairs)}" + (f"<h3>Spec</h3>{spec_html}" if spec_html else "") + versions_html


def _model_section(job: dict, first_meta) -> str:
    bundle = job.get("bundle") or {}
    pairs = [
        ("Model version", bundle.get("version") or (first_meta.model_version if first_meta else None)),
        ("Architecture", bundle.get("architecture")),
        ("Bundle sha256", bundle.get("sha256") or (first_meta.bundle_sha256 if first_meta else None)),
        ("Decision threshold", bundle.get("threshold", first_meta.threshold if first_meta else None)),
        ("Minimum IDC area for an IDC call (mm²)", min_idc_area_mm2(first_meta) if first_meta else None),
    ]
    metrics = bundle.get("metrics") or bundle.get("validation_metrics") or {}
    kind = bundle.get("metrics_kind", "validation")
    metrics_html = ""
    if metrics:
        metric_pairs = [(k, f"{v:.4f}" if isinstance(v, float) else _json_text(v)) for k, v in sorted(metrics.items())]
        metrics_html = f"<h3>{esc(kind.capitalize())} metrics</h3>{_kv(metric_pairs)}"
    return f"<h2>Model</h2>{_kv(pairs)}{metrics_html}"


def _failed_section(failures: list[dict]) -> str:
    if not failures:
        return '<h2>Failed slides</h2><p class="muted">None.</p>'
    rows = "".join(
        f"<tr><td>{esc(f.get('patient_id'))}</td><td>{esc(f.get('slide_id'))}</td>"
        f"<td>{esc(f.get('source'))}</td><td>{esc(f.get('error'))}</td></tr>"
        for f in failures
    )
    return (
        '<h2>Failed slides</h2><table id="failed"><thead><tr><th>Patient</th><th>Slide</th>'
        f"<th>Source</th><th>Reason</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def _overlay_section(job_dir, patients: list[dict], slides: list[dict]) -> str:
    done_by_patient: dict[str, list[dict]] = {}
    for s in slides:
        if s["status"] == "done":
            done_by_patient.setdefault(s["patient_id"], []).append(s)
    parts = ["<h2>IDC overlays</h2>"]
    for patient in patients:
        figures = []
        for s in done_by_patient.get(patient["patient_id"], []):
            uri = overlay_data_uri(JobDir(job_dir).maps(s["patient_id"], s["slide_id"]) / "overlay.png")
            caption = (
                f"{esc(s['slide_id'])}: {esc(s['call'])}, IDC fraction "
                f"{esc(format_value(s['idc_fraction'], 'fraction'))}"
            )
            img = (
                f'<img src="{uri}" alt="IDC overlay of {esc(s["slide_id"])}">'
                if uri
                else '<p class="muted">no overlay (run idcmap report)</p>'
            )
            figures.append(f"<figure>{img}<figcaption>{caption}</figcaption></figure>")
        if figures:
            parts.append(f"<h3>{esc(patient['patient_id'])}</h3>{''.join(figures)}")
    return "".join(parts)


def render_report(job_dir) -> str:
    """The report page's HTML for a job folder (summaries from summaries.parquet when present)."""
    jd = JobDir(job_dir)
    job = read_job(jd)
    files = jd.prediction_files()
    first_meta = next((load_meta(f) for f in files if predictions_problem(f) is None), None)
    rows = load_summary_rows(job_dir)
    patients = patient_order([r for r in rows if r["level"] == "patient"])
    slides = [r for r in rows if r["level"] == "slide"]
    failed_keys = {(s["patient_id"], s["slide_id"]) for s in slides if s["status"] == "failed"}
    failures = [f for f in read_failures(jd) if (f["patient_id"], f["slide_id"]) in failed_keys]
    title = f"idcmap report: {job.get('job_id') or (first_meta.job_id if first_meta else jd.root.name)}"
    body = "".join(
        [
            f"<h1>{esc(title)}</h1>",
            "<h2>Patients</h2>",
            _table("patients", PATIENT_COLUMNS, patients),
            _overlay_section(job_dir, patients, slides),
            "<h2>Slides</h2>",
            _table("slides", SLIDE_COLUMNS, slides),
            _failed_section(failures),
            '<details id="about"><summary>Job, model and package versions</summary>',
            _job_section(job, first_meta, patients, slides, failures),
            _model_section(job, first_meta),
            "</details>",
        ]
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head>"
        f"<body>{body}</body></html>\n"
    )


def write_report(job_dir) -> Path:
    """Write ``JOB_DIR/report/index.html`` atomically and return its path."""
    path = JobDir(job_dir).report
    write_bytes_atomic(path, render_report(job_dir).encode("utf-8"))
    return path
