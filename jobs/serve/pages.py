"""The served pages' HTML: every value from a job escaped; scripts and styles from /static/ only
(the Content-Security-Policy allows no inline script), data passed in ``data-`` attributes."""

from __future__ import annotations

from idcmap.jobs.render.report import PATIENT_COLUMNS, SLIDE_COLUMNS, esc, format_value
from idcmap.jobs.serve.jobs import ServedJob, Slide


def _page(title: str, body: str, script: str, head: str = "") -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<title>{esc(title)}</title><link rel="stylesheet" href="/static/style.css">{head}</head>'
        f'<body><nav><a href="/">Jobs</a> <a href="/predict">Score a patch</a></nav>{body}'
        f'<script src="/static/{script}"></script></body></html>\n'
    )


def _table(job: ServedJob, columns, rows: list[dict]) -> str:
    """A sortable table; a done slide's id links to its viewer."""
    head = "".join(f'<th data-kind="{kind}">{esc(h)}</th>' for h, _, kind in columns)
    body = []
    for r in rows:
        cells = []
        for _, key, kind in columns:
            text = esc(format_value(r.get(key), kind))
            sort = esc(r.get(key)) if r.get(key) is not None else ""
            if key == "slide_id" and r.get("status") == "done":
                href = f"/jobs/{esc(job.name)}/slides/{esc(r['patient_id'])}/{esc(r['slide_id'])}"
                text = f'<a href="{href}">{text}</a>'
            cells.append(f'<td class="{"num" if kind != "text" else esc(key)}" data-sort="{sort}">{text}</td>')
        body.append(f'<tr class="status-{esc(r.get("status"))}">{"".join(cells)}</tr>')
    return f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def index(jobs: dict[str, ServedJob]) -> str:
    parts = ["<h1>idcmap jobs</h1>"]
    for name, job in jobs.items():
        patients, slides = job.summary_rows()
        parts.append(
            f'<section class="job" data-job="{esc(name)}"><h2>{esc(name)}</h2>'
            '<p class="progress" aria-live="polite"></p><div class="tables">'
            f"<h3>Patients</h3>{_table(job, PATIENT_COLUMNS, patients)}"
            f"<h3>Slides</h3>{_table(job, SLIDE_COLUMNS, slides)}</div></section>"
        )
    if not jobs:
        parts.append('<p class="muted">No jobs served.</p>')
    return _page("idcmap jobs", "".join(parts), "index.js")


def viewer(job: str, slide: Slide) -> str:
    api = f"/api/jobs/{esc(job)}/slides/{esc(slide.patient_id)}/{esc(slide.slide_id)}"
    body = (
        f"<h1>{esc(slide.patient_id)} / {esc(slide.slide_id)} <small class=muted>{esc(job)}</small></h1>"
        f'<div class="controls" id="controls" data-api="{api}">'
        '<label><input type="checkbox" id="show-overlay" checked> IDC probability</label> '
        '<label>opacity <input type="range" id="opacity" min="0" max="100" value="50"></label> '
        '<label><input type="checkbox" id="show-regions" checked> IDC regions</label> '
        '<span class="legend">0 <span class="bar"></span> 1</span> '
        '<span id="note" class="muted"></span></div>'
        '<div id="viewer"></div><div id="patch-info" class="muted">Click the slide to see a patch.</div>'
    )
    head = '<script src="/static/openseadragon/openseadragon.min.js"></script>'
    return _page(f"{slide.patient_id} / {slide.slide_id}", body, "viewer.js", head)


def predict() -> str:
    body = (
        "<h1>Score a patch</h1>"
        "<p>A 50x50 patch at 4.0 µm/px, or a larger H&amp;E image with its µm/px: it is tiled like a "
        "slide and each tissue patch scored.</p>"
        '<form id="predict-form"><input type="file" name="image" id="image" accept="image/png,image/jpeg" required> '
        '<label>µm/px <input type="text" name="mpp" id="mpp" size="6" placeholder="4.0"></label> '
        '<button type="submit">Score</button></form>'
        '<div id="result" aria-live="polite"></div><canvas id="preview" width="0" height="0"></canvas>'
    )
    return _page("Score a patch", body, "predict.js")
