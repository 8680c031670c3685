"""The ``idcmap`` command line."""
from __future__ import annotations

import click

from idcmap import __version__
from .model_cli import evaluate, train
from .score_cli import query, report, score, status
from .tiling_cli import build_slide_cmd, info, tile


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="idcmap")
def cli():
    """idcmap: tile whole-slide images and score them for invasive ductal carcinoma."""


for _command in (score, status, query, report, info, tile, build_slide_cmd, train, evaluate):
    cli.add_command(_command)


def main():
    cli()
