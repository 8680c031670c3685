"""``idcmap serve``: the HTTP server (standard library, one thread per request).

Routes (every other path is 404; ids are looked up in the served jobs' records, never used as paths):

    GET  /                                             jobs, patients and slides; live progress
    GET  /jobs/<job>/slides/<patient>/<slide>          the deep-zoom viewer
    GET  /predict                                      the upload-a-patch page
    GET  /static/<file>                                the page's scripts, styles, OpenSeadragon
    GET  /api/jobs                                     every job's progress (JSON)
    GET  /api/jobs/<job>/slides/<patient>/<slide>/info          geometry, overlay box, threshold
    GET  /api/jobs/<job>/slides/<patient>/<slide>/tiles/<level>/<col>_<row>.jpg
    GET  /api/jobs/<job>/slides/<patient>/<slide>/thumbnail.jpg  (the stored one)
    GET  /api/jobs/<job>/slides/<patient>/<slide>/overlay.png    one pixel per grid cell
    GET  /api/jobs/<job>/slides/<patient>/<slide>/regions.geojson
    GET  /api/jobs/<job>/slides/<patient>/<slide>/patch?x=X&y=Y  the patch under a level-0 point
    POST /api/predict                                  multipart: image, optional mpp

With a token (``--token-file`` or ``IDCMAP_SERVE_TOKEN``; required off loopback) every request
must carry it: ``Authorization: Bearer TOKEN``, or the cookie a browser gets by opening any page
once with ``?token=TOKEN``.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import re
import threading
import time
from http import HTTPStatus
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

from idcmap.errors import IdcmapError, InputError
from idcmap.jobs.serve import pages
from idcmap.jobs.serve.jobs import ServedJob, Slide
from idcmap.jobs.serve.predict import MAX_UPLOAD_BYTES, Predictor, multipart_fields
from idcmap.jobs.serve.tiles import SlideTiles
from idcmap.slide_tiling import SlideError

log = logging.getLogger("idcmap")

TOKEN_COOKIE = "idcmap_token"
STATIC_TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png", ".txt": "text/plain"}
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
    "frame-ancestors 'none'",
}
SEGMENT = re.compile(r"^[^/\\]+$")


def static_files() -> dict[str, tuple[bytes, str]]:
    """The fixed set of files under /static/: name -> (bytes, content type), read once."""
    root = resources.files("idcmap.jobs.serve") / "static"
    files: dict[str, tuple[bytes, str]] = {}

    def walk(folder, prefix: str) -> None:
        for entry in folder.iterdir():
            if entry.is_dir():
                walk(entry, f"{prefix}{entry.name}/")
            elif (kind := STATIC_TYPES.get(Path(entry.name).suffix)) is not None:
                files[prefix + entry.name] = (entry.read_bytes(), kind)

    walk(root, "")
    return files


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class HttpError(Exception):
    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status


class App:
    """The served jobs, the tile cache, the predictor: everything the handler threads share."""

    def __init__(self, job_dirs, model=None, token: str | None = None):
        self.jobs: dict[str, ServedJob] = {}
        for d in job_dirs:
            job = ServedJob(Path(d), Path(d).resolve().name)
            if not job.job.is_job():
                raise IdcmapError(f"{d}: not an idcmap job folder (no job.json)")
            if job.name in self.jobs:
                raise IdcmapError(f"{d}: another served job is also named {job.name!r}; serve one of them")
            self.jobs[job.name] = job
        self.model, self.token = model, token
        self.tiles = SlideTiles()
        self.static = static_files()
        self._predictor: Predictor | None = None
        self._predictor_lock = threading.Lock()

    def predictor(self) -> Predictor:
        with self._predictor_lock:
            if self._predictor is None:
                from idcmap.model import load_bundle
                from idcmap.models import DEFAULT_MODEL

                self._predictor = Predictor(load_bundle(self.model or DEFAULT_MODEL))
            return self._predictor

    def job_and_slide(self, job: str, patient: str, slide: str) -> tuple[ServedJob, Slide]:
        served = self.jobs.get(job)
        found = served.slide(patient, slide) if served else None
        if served is None or found is None:
            raise HttpError(HTTPStatus.NOT_FOUND, "no such slide")
        return served, found

    def progress(self) -> list[dict]:
        out = []
        for name, job in self.jobs.items():
            st = job.status()
            out.append(
                {
                    "job": name,
                    "running": st.running,
                    "done": st.done,
                    "failed": len(st.failed),
                    "pending": st.pending,
                    "slides": st.slides,
                    "patches": st.patches,
                    "patches_per_s": st.rate,
                    "eta_minutes": st.eta_minutes,
                }
            )
        return out


class Handler(BaseHTTPRequestHandler):
    app: App  # set on the subclass serve() makes
    server_version = "idcmap"
    sys_version = ""
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        log.debug("%s %s", self.address_string(), format % args)

    # --- plumbing ---------------------------------------------------------------------------
    def send(self, status: HTTPStatus, body: bytes, kind: str, headers: dict | None = None) -> None:
        self.send_response(status)
        for k, v in (
            SECURITY_HEADERS | {"Content-Type": kind, "Content-Length": str(len(body))} | (headers or {})
        ).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_json(self, value, status: HTTPStatus = HTTPStatus.OK) -> None:
        self.send(status, json.dumps(value).encode(), "application/json")

    def send_error_line(self, status: HTTPStatus, message: str) -> None:
        """Errors are one line: JSON for the API, text elsewhere."""
        if self.path.startswith("/api/"):
            self.send_json({"error": message}, status)
        else:
            self.send(status, (message + "\n").encode(), "text/plain; charset=utf-8")

    def authorised(self, query: dict) -> bool | None:
        """True: go on; False: refused; None: a redirect setting the cookie was sent."""
        token = self.app.token
        if token is None:
            return True
        given = self.headers.get("Authorization", "")
        if given.startswith("Bearer ") and hmac.compare_digest(given[7:].encode(), token.encode()):
            return True
        cookie = SimpleCookie(self.headers.get("Cookie", ""))
        if TOKEN_COOKIE in cookie and hmac.compare_digest(cookie[TOKEN_COOKIE].value.encode(), token.encode()):
            return True
        if "token" in query and hmac.compare_digest(query["token"][0].encode(), token.encode()):
            rest = {k: v for k, v in query.items() if k != "token"}
            location = urlsplit(self.path).path + (f"?{urlencode(rest, doseq=True)}" if rest else "")
            cookie_value = f"{TOKEN_COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/"
            self.send(HTTPStatus.SEE_OTHER, b"", "text/plain", {"Location": location, "Set-Cookie": cookie_value})
            return None
        return False

    def route(self) -> list[str] | None:
        """The path's segments, decoded; None for anything that could name a file elsewhere."""
        raw = urlsplit(self.path).path
        if "\\" in raw or re.search(r"%(2f|5c|00)", raw, re.IGNORECASE) or "//" in raw:
            return None
        parts = [unquote(p) for p in raw.strip("/").split("/")] if raw.strip("/") else []
        if any(p in (".", "..") or not SEGMENT.match(p) for p in parts):
            return None
        return parts

    def handle_any(self, method: str) -> None:
        query = parse_qs(urlsplit(self.path).query)
        allowed = self.authorised(query)
        if allowed is None:
            return
        if not allowed:
            return self.send_error_line(HTTPStatus.UNAUTHORIZED, "a valid token is required (Authorization: Bearer)")
        parts = self.route()
        try:
            if parts is None:
                raise HttpError(HTTPStatus.NOT_FOUND, "not found")
            if method == "POST":
                if parts != ["api", "predict"]:
                    raise HttpError(HTTPStatus.NOT_FOUND, "not found")
                return self.post_predict()
            self.get(parts, query)
        except HttpError as exc:
            self.send_error_line(exc.status, str(exc))
        except (InputError, SlideError) as exc:
            self.send_error_line(HTTPStatus.BAD_REQUEST, str(exc))
        except Exception as exc:  # a bug: one line to the client, the traceback in the log
            log.exception("serve: %s %s", method, self.path)
            self.send_error_line(HTTPStatus.INTERNAL_SERVER_ERROR, f"internal error: {type(exc).__name__}")

    def do_GET(self):  # noqa: N802 (the base class's name)
        self.handle_any("GET")

    def do_HEAD(self):  # noqa: N802
        self.handle_any("GET")

    def do_POST(self):  # noqa: N802
        self.handle_any("POST")

    # --- GET ----------------------------------------------------------------------------------
    def get(self, parts: list[str], query: dict) -> None:
        html = "text/html; charset=utf-8"
        match parts:
            case []:
                return self.send(HTTPStatus.OK, pages.index(self.app.jobs).encode(), html)
            case ["favicon.ico"]:
                return self.send(HTTPStatus.NO_CONTENT, b"", "image/x-icon")
            case ["predict"]:
                return self.send(HTTPStatus.OK, pages.predict().encode(), html)
            case ["static", *rest] if "/".join(rest) in self.app.static:
                body, kind = self.app.static["/".join(rest)]
                return self.send(HTTPStatus.OK, body, kind, {"Cache-Control": "max-age=3600"})
            case ["jobs", job, "slides", patient, slide]:
                served, found = self.app.job_and_slide(job, patient, slide)
                return self.send(HTTPStatus.OK, pages.viewer(served.name, found).encode(), html)
            case ["api", "jobs"]:
                return self.send_json(self.app.progress())
            case ["api", "jobs", job, "slides", patient, slide, *rest]:
                return self.slide_api(*self.app.job_and_slide(job, patient, slide), rest, query)
        raise HttpError(HTTPStatus.NOT_FOUND, "not found")

    def slide_api(self, job: ServedJob, slide: Slide, rest: list[str], query: dict) -> None:
        data = job.data(slide)
        match rest:
            case ["info"]:
                return self.send_json(self.slide_info(job, slide, data))
            case ["tiles", level, name] if level.isdigit() and re.fullmatch(r"\d+_\d+\.jpg", name):
                if slide.source is None:
                    raise HttpError(HTTPStatus.NOT_FOUND, "this job holds no slide file to read")
                col, row = map(int, name[:-4].split("_"))
                tile = self.app.tiles.tile(slide.source, int(level), col, row)
                if tile is None:
                    raise HttpError(HTTPStatus.NOT_FOUND, "no such tile")
                return self.send(HTTPStatus.OK, tile, "image/jpeg", {"Cache-Control": "max-age=3600"})
            case ["thumbnail.jpg"] if data and data.meta.thumbnail_jpeg:
                return self.send(HTTPStatus.OK, data.meta.thumbnail_bytes(), "image/jpeg")
            case ["overlay.png"] if data:
                return self.send(HTTPStatus.OK, data.overlay_png(), "image/png")
            case ["regions.geojson"]:
                return self.send(HTTPStatus.OK, json.dumps(job.regions(slide)).encode(), "application/geo+json")
            case ["patch"] if data:
                try:
                    x, y = float(query["x"][0]), float(query["y"][0])
                except (KeyError, ValueError):
                    raise HttpError(HTTPStatus.BAD_REQUEST, "give the level-0 point as ?x=..&y=..") from None
                return self.send_json({"patch": data.patch_at(x, y)})
        raise HttpError(HTTPStatus.NOT_FOUND, "not found (or the slide is not scored yet)")

    def slide_info(self, job: ServedJob, slide: Slide, data) -> dict:
        """What the viewer needs: the pyramid (or only the stored thumbnail), the overlay's box."""
        info: dict = {"patient_id": slide.patient_id, "slide_id": slide.slide_id, "scored": data is not None}
        problem = "the job is pseudonymised: it holds no slide path" if slide.source is None else None
        if slide.source is not None:
            try:
                pyramid = self.app.tiles.pyramid(slide.source)
                info |= {"width": pyramid.width, "height": pyramid.height, "max_level": pyramid.max_level}
            except SlideError as exc:  # moved, unmounted ...: the stored thumbnail stands in
                log.warning("serve: %s", exc)  # the path in the server's log, never in a page
                problem = "the slide file cannot be opened here (moved, or not mounted?)"
        if problem:
            info["slide_problem"] = problem
        if data is not None:
            m = data.meta
            info |= {
                "width0": m.width0,
                "height0": m.height0,
                "thumbnail_downsample": m.thumbnail_downsample,
                "overlay_box": data.overlay_box(),
                "threshold": m.threshold,
                "model_version": m.model_version,
                "mpp": list(m.mpp),
            }
        return info

    # --- POST ---------------------------------------------------------------------------------
    def post_predict(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_UPLOAD_BYTES:
            self.close_connection = True  # the body is not read
            raise HttpError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"upload of {length:,} bytes: the limit is "
                            f"{MAX_UPLOAD_BYTES:,}")  # fmt: skip
        body = self.rfile.read(length)
        fields = multipart_fields(self.headers.get("Content-Type", ""), body)
        if "image" not in fields:
            raise HttpError(HTTPStatus.BAD_REQUEST, "no 'image' field in the form (multipart/form-data)")
        filename, data = fields["image"]
        mpp_text = (fields.get("mpp") or ("", b""))[1].decode(errors="replace").strip()
        try:
            mpp = float(mpp_text) if mpp_text else None
        except ValueError:
            raise HttpError(HTTPStatus.BAD_REQUEST, f"mpp {mpp_text!r} is not a number") from None
        t0 = time.perf_counter()
        result = self.app.predictor().predict(data, filename or "upload", mpp)
        self.send_json(result | {"seconds": round(time.perf_counter() - t0, 3)})


def make_server(app: App, host: str, port: int) -> ThreadingHTTPServer:
    handler = type("BoundHandler", (Handler,), {"app": app})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server
