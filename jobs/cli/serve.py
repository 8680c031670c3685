"""``idcmap serve``: the web viewer of scoring jobs."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import click

from idcmap.errors import InputError

log = logging.getLogger("idcmap")
TOKEN_ENV = "IDCMAP_SERVE_TOKEN"


def read_token(token_file: Path | None) -> str | None:
    """The access token: from ``token_file``, else the environment, else None."""
    token: str | None
    if token_file is not None:
        try:
            token = token_file.read_text().strip()
        except OSError as exc:
            raise InputError(f"{token_file}: cannot read the token file: {exc.strerror or exc}") from None
        if not token:
            raise InputError(f"{token_file}: the token file is empty")
    else:
        token = os.environ.get(TOKEN_ENV, "").strip() or None
    if token is not None and len(token) < 16:
        raise InputError("the token is too short: use at least 16 characters (e.g. `openssl rand -hex 16`)")
    return token


@click.command()
@click.argument("job_dirs", nargs=-1, required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="0: any free port.")
@click.option(
    "--model",
    type=click.Path(path_type=Path),
    default=None,
    help="Bundle of the /predict page (default: the shipped models/idc-default).",
)
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help=f"File holding the access token (default: the {TOKEN_ENV} environment variable); "
    "required when --host is not a loopback address.",
)
def serve(job_dirs, host, port, model, token_file):
    """Serve JOB_DIR... in the browser: jobs, slides with their IDC heatmaps, and /predict."""
    from idcmap.jobs.serve.app import App, is_loopback, make_server

    token = read_token(token_file)
    if token is None and not is_loopback(host):
        raise InputError(
            f"--host {host} is reachable from other machines: give an access token "
            f"(--token-file FILE or {TOKEN_ENV}); it is never taken on the command line"
        )
    app = App(job_dirs, model=model, token=token)
    server = make_server(app, host, port)
    url = f"http://{host}:{server.server_address[1]}/"
    log.info("serving %d job%s at %s%s (Ctrl-C stops)", len(app.jobs), "s"[: len(app.jobs) != 1], url,
             " (token required)" if token else "")  # fmt: skip
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        app.tiles.close()
