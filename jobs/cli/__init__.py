"""The ``idcmap`` command line."""
from __future__ import annotations

import click
from idcmap.jobs.cli.model import evaluate, train
from idcmap.jobs.cli.score import query, report, score, status
from idcmap.jobs.cli.tiling import build_slide_cmd, info, tile

from idcmap import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="idcmap")
def cli():
    """idcmap: tile whole-slide images and score them for invasive ductal carcinoma."""


for _command in (score, status, query, report, info, tile, build_slide_cmd, train, evaluate):
    cli.add_command(_command)


def main():
    cli()
