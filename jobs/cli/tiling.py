"""``idcmap info``, ``idcmap tile`` and ``idcmap build-slide``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import click
import numpy as np

from idcmap.slide_tiling import (
    DEFAULT_MIN_TISSUE,
    DEFAULT_TARGET_MPP,
    PATCH_SIZE,
    SlideError,
    TilingSpec,
    build_slide,
    choose_level,
    iter_patches,
    open_slide,
    plan_slide,
)
from idcmap.slide_tiling.preview import render_preview, write_png

mpp_option = click.option(
    "--mpp",
    type=float,
    default=None,
    help="Level-0 microns per pixel: needed when the file does not say; overrides it when it does.",
)
target_option = click.option(
    "--target-mpp",
    type=float,
    default=DEFAULT_TARGET_MPP,
    show_default=True,
    help="Resolution the patches are cut at (4.0 = 2.5x).",
)


@click.command()
@click.argument("slide", type=click.Path(path_type=Path))
@mpp_option
@target_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def info(slide, mpp, target_mpp, as_json):
    """Format, vendor, levels, mpp, objective power and the level chosen for the target."""
    with open_slide(slide) as reader:
        meta = reader.describe()
        try:
            choice = choose_level(reader, target_mpp, mpp)
            meta["chosen_level"] = {
                "level": choice.level,
                "level_mpp": list(choice.level_mpp),
                "resize": round(max(choice.scale), 4),
                "target_mpp": target_mpp,
            }
        except SlideError as exc:
            meta["chosen_level"] = {"error": exc.reason}
    if as_json:
        click.echo(json.dumps(meta, indent=2))
        return
    click.echo(f"{meta['path']}")
    click.echo(f"  format           {meta['format']} (vendor: {meta['vendor'] or '-'})")
    click.echo(f"  size             {meta['dimensions'][0]} x {meta['dimensions'][1]} px")
    mpp_text = "none in file" if not meta["mpp"] else "{:.4g} x {:.4g}".format(*meta["mpp"])
    click.echo(f"  mpp              {mpp_text}")
    click.echo(f"  objective power  {meta['objective_power'] or '-'}")
    for i, (dims, ds) in enumerate(zip(meta["level_dimensions"], meta["level_downsamples"])):
        click.echo(f"  level {i}          {dims[0]} x {dims[1]} (downsample {ds:g})")
    chosen = meta["chosen_level"]
    if "error" in chosen:
        click.echo(f"  chosen level     none: {chosen['error']}")
    else:
        click.echo(
            f"  chosen level     {chosen['level']} at {chosen['level_mpp'][0]:.4g} µm/px, "
            f"resized {chosen['resize']:g}x to {target_mpp:g} µm/px"
        )


@click.command()
@click.argument("slide", type=click.Path(path_type=Path))
@mpp_option
@target_option
@click.option("--patch-size", type=int, default=PATCH_SIZE, show_default=True)
@click.option("--stride", type=int, default=PATCH_SIZE, show_default=True)
@click.option(
    "--min-tissue",
    type=float,
    default=DEFAULT_MIN_TISSUE,
    show_default=True,
    help="Minimum tissue fraction of a patch.",
)
@click.option("--preview", type=click.Path(path_type=Path), help="Write a PNG of the thumbnail, tissue and grid.")
@click.option("--patches", type=click.Path(path_type=Path), help="Write the tissue patches as CSV.")
def tile(slide, mpp, target_mpp, patch_size, stride, min_tissue, preview, patches):
    """Find the tissue and cut it into patches; print the tissue patch count."""
    spec = TilingSpec(target_mpp=target_mpp, patch_size=patch_size, stride=stride, min_tissue=min_tissue, mpp=mpp)
    with open_slide(slide) as reader:
        plan = plan_slide(reader, spec)
        found = {k: [] for k in ("x", "y", "cols", "rows", "tissue_fraction")}
        for batch in iter_patches(reader, plan):
            for k, v in found.items():
                v.append(getattr(batch, k))
    x, y, cols, rows, frac = (np.concatenate(v) if v else np.zeros(0, np.int64) for v in found.values())
    for out in (preview, patches):
        if out:
            out.parent.mkdir(parents=True, exist_ok=True)
    if preview:
        write_png(preview, render_preview(plan, cols, rows))
    if not len(cols):
        raise SlideError(
            slide,
            f"no tissue found: none of the {plan.grid.cols * plan.grid.rows} patches reaches {min_tissue:.0%} tissue",
        )
    if patches:
        with open(patches, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["x", "y", "col", "row", "tissue_fraction"])
            w.writerows(
                zip(x.tolist(), y.tolist(), cols.tolist(), rows.tolist(), np.round(frac.astype(float), 4).tolist())
            )
    lvl = plan.level
    click.echo(
        f"{slide}: {len(cols)} tissue patches of {plan.grid.cols * plan.grid.rows} in the "
        f"{plan.grid.cols}x{plan.grid.rows} grid ({patch_size} px at {target_mpp:g} µm/px, "
        f"level {lvl.level} resized {max(lvl.scale):.3g}x, tissue {plan.tissue.fraction:.1%} "
        f"of the thumbnail)"
    )


@click.command("build-slide")
@click.argument("patient_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out_tiff", type=click.Path(path_type=Path))
@click.option(
    "--mask",
    type=click.Path(path_type=Path),
    help="Write the ground-truth IDC mask PNG (1 px per patch: 0 none, 128 no IDC, 255 IDC).",
)
@click.option(
    "--scan-mpp",
    type=float,
    default=None,
    help="Write as a scan at this mpp (0.25 = 40x: upsampled 16x, levels 1/4/16).",
)
@click.option("--quality", type=click.IntRange(50, 100), default=90, show_default=True, help="JPEG quality.")
def build_slide_cmd(patient_dir, out_tiff, mask, scan_mpp, quality):
    """Rebuild a patient's slide from its Kaggle patch folder as a pyramidal tiled TIFF."""
    result = build_slide(patient_dir, out_tiff, mask, scan_mpp, quality)
    dims = " / ".join(f"{w}x{h}" for w, h in result["level_dimensions"])
    click.echo(
        f"{out_tiff}: patient {result['patient_id']}, {result['patches']} patches "
        f"({result['idc_patches']} IDC), levels {dims} at {result['mpp']:g} µm/px"
    )
