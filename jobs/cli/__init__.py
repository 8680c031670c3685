"""The ``idcmap`` command line: thin commands over the library.

One handler: an :class:`~idcmap.errors.IdcmapError` (bad input, an unusable file) is printed as
``Error: <its one line>`` with exit code 1; any other exception is a bug and keeps its traceback.
Messages go through the ``idcmap`` logger: ``--quiet`` shows warnings and errors only,
``--verbose`` adds debug messages and TensorFlow's and Ray's own.
"""

from __future__ import annotations

import logging

import click

from idcmap import __version__
from idcmap.errors import IdcmapError
from idcmap.jobs.cli.model import evaluate, train
from idcmap.jobs.cli.score import query, report, score, status
from idcmap.jobs.cli.serve import serve
from idcmap.jobs.cli.tiling import build_slide_cmd, info, tile


class _EchoHandler(logging.Handler):
    """Log records on the current stderr (click's, so CliRunner sees them); WARNING and above
    prefixed with their level."""

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.levelno >= logging.WARNING:
            text = f"{record.levelname} {text}"
        click.echo(text, err=True)


def configure_logging(verbosity: int) -> None:
    """-1 quiet (warnings), 0 normal (info), 1 verbose (debug, and TensorFlow's own messages)."""
    import os

    logger = logging.getLogger("idcmap")
    logger.handlers = [h for h in logger.handlers if not isinstance(h, _EchoHandler)] + [_EchoHandler()]
    logger.setLevel({-1: logging.WARNING, 0: logging.INFO}.get(verbosity, logging.DEBUG))
    logger.propagate = False
    if verbosity < 1:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except IdcmapError as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="idcmap")
@click.option("-v", "--verbose", is_flag=True, help="Debug messages, TensorFlow's and Ray's included.")
@click.option("-q", "--quiet", is_flag=True, help="Warnings and errors only.")
def cli(verbose, quiet):
    """idcmap: tile whole-slide images and score them for invasive ductal carcinoma."""
    if verbose and quiet:
        raise click.UsageError("--verbose and --quiet exclude each other")
    configure_logging(1 if verbose else -1 if quiet else 0)


for _command in (score, status, query, report, serve, info, tile, build_slide_cmd, train, evaluate):
    cli.add_command(_command)


def main():
    cli()
