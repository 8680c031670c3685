"""The ``idcmap`` command line."""
from __future__ import annotations

import click

from . import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="idcmap")
def cli():
    """idcmap: tile whole-slide images and score them for invasive ductal carcinoma."""


from .tiling_cli import build_slide_cmd, info, tile  # noqa: E402

for _command in (info, tile, build_slide_cmd):
    cli.add_command(_command)


def main():
    cli()


from .model_cli import evaluate, train  # noqa: E402

cli.add_command(train)
cli.add_command(evaluate)
