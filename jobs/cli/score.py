"""``idcmap score``, ``status``, ``query`` and ``report``."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from idcmap.model.backends import BACKENDS
from idcmap.models import DEFAULT_MODEL
from idcmap.slide_tiling import DEFAULT_MIN_TISSUE

log = logging.getLogger("idcmap")


@click.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option(
    "--out",
    "job_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The job folder: everything the job writes goes under it.",
)
@click.option(
    "--model",
    "model_dir",
    default=str(DEFAULT_MODEL),
    show_default="the shipped models/idc-default",
    type=click.Path(path_type=Path),
    help="Model bundle folder.",
)
@click.option(
    "--address",
    default=None,
    help="Ray cluster to join: 'auto' or HOST:PORT (default: RAY_ADDRESS, else an embedded local Ray).",
)
@click.option(
    "--backend",
    type=click.Choice(BACKENDS),
    default="onnx",
    show_default=True,
    help="Inference backend (the bundle must offer it).",
)
@click.option(
    "--batch-size",
    default=8,
    show_default=True,
    type=click.IntRange(1, 65536),
    help="Patches per inference call (8: fastest with one inference thread per actor, benchmarks/README.md).",
)
@click.option("--mpp", type=float, default=None, help="Level-0 µm/px for slides whose file does not say.")
@click.option(
    "--actors",
    type=click.IntRange(1, 1024),
    default=None,
    help="Scorer actors, each planning, tiling and scoring with one inference thread (default: one per CPU).",
)
@click.option("--num-cpus", type=click.IntRange(1, 4096), default=None, help="CPUs of the embedded Ray.")
@click.option(
    "--gpus-per-actor",
    type=click.FloatRange(0, 1, min_open=True),
    default=None,
    help="Also run GPU scorers, each taking this share of a GPU (0.25: four per GPU), beside the CPU ones.",
)
@click.option("--min-tissue", type=float, default=DEFAULT_MIN_TISSUE, show_default=True)
@click.option(
    "--pseudonymize", is_flag=True, help="Replace patient and slide ids in all outputs and messages by keyed HMACs."
)
@click.option(
    "--key-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="File holding the pseudonym key (default: the IDCMAP_PSEUDONYM_KEY environment variable).",
)
def score(
    inputs,
    job_dir,
    model_dir,
    address,
    backend,
    batch_size,
    mpp,
    actors,
    num_cpus,
    gpus_per_actor,
    min_tissue,
    pseudonymize,
    key_file,
):
    """Score slides for IDC into JOB_DIR; re-run the same command to resume."""
    from idcmap.jobs.service import ScoreOptions, score_job

    if key_file is not None and not pseudonymize:
        raise click.UsageError("--key-file is only used with --pseudonymize")
    result = score_job(
        inputs,
        job_dir,
        ScoreOptions(
            model=model_dir,
            address=address,
            backend=backend,
            batch_size=batch_size,
            mpp=mpp,
            actors=actors,
            num_cpus=num_cpus,
            gpus_per_actor=gpus_per_actor or 0.0,
            min_tissue=min_tissue,
            pseudonymize=pseudonymize,
            key_file=key_file,
        ),
    )
    if result.failed:
        sys.exit(1)


@click.command()
@click.argument("job_dir", type=click.Path(file_okay=False, path_type=Path))
def status(job_dir):
    """Slides done, failed and pending; patches; rate and ETA of a running job."""
    from idcmap.jobs.service import job_status

    st = job_status(job_dir)
    click.echo(f"{job_dir}: {'running' if st.running else 'not running'}")
    click.echo(f"  slides   {st.done} done, {len(st.failed)} failed, {st.pending} pending, {st.slides} in all")
    click.echo(f"  patches  {st.patches:,} scored")
    if st.running and st.last_run:
        eta = f"{st.eta_minutes:.1f} min" if st.eta_minutes is not None else "?"
        click.echo(f"  rate     {st.rate:,.0f} patches/s in this run; ETA {eta} for {st.pending} slides")
    elif st.last_run:
        last = st.last_run
        click.echo(
            f"  last run {last['started']} .. {last.get('finished', 'interrupted')}, "
            f"{last.get('patches', 0):,} patches in {last.get('seconds', '?')} s"
        )
    for name, n in sorted((st.last_run or {}).get("nodes", {}).items()):
        rate = f", {n['patches'] / st.elapsed:,.0f} patches/s" if st.running and st.elapsed else ""
        cpus = f"{n['cpus']:g} CPUs, " if "cpus" in n else ""
        cpus += f"{n['gpus']:g} GPUs, " if "gpus" in n else ""
        cpus += f"{n['gpu_scorers']} GPU scorers (inferring on {n['gpu_device']}), " if "gpu_scorers" in n else ""
        click.echo(f"  node     {name}: {cpus}{n['slides_planned']} slides planned, {n['patches']:,} patches{rate}")
    for f in st.failed:
        click.echo(f"  FAILED   {f['patient_id']}/{f['slide_id']}: {f['error']}")
    for problem in st.damaged:
        click.echo(f"  DAMAGED  {problem}; the next idcmap score scores the slide again")


@click.command()
@click.argument("job_dir", type=click.Path(file_okay=False, path_type=Path))
@click.argument("sql")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
def query(job_dir, sql, fmt):
    """Run SQL (DuckDB) over the views `predictions` and `summaries` of a job."""
    import duckdb

    from idcmap.jobs.jobdir.schema import parquet_problem
    from idcmap.jobs.service import existing_job, readable_predictions

    job = existing_job(job_dir)
    files, damaged = readable_predictions(job)
    summaries = job.summaries if job.summaries.exists() else None
    if summaries and (problem := parquet_problem(summaries)):
        damaged.append(f"{problem} (idcmap report rebuilds it)")
        summaries = None
    for problem in damaged:  # damaged files are left out of the views; the rest are queried
        log.warning("%s; left out", problem)
    con = duckdb.connect()
    con.execute("SET python_enable_replacements = false")  # SQL sees the two views, never Python variables
    quoted = lambda p: "'" + str(p).replace("'", "''") + "'"  # noqa: E731
    if files:
        listed = ", ".join(map(quoted, files))
        con.execute(f"CREATE VIEW predictions AS SELECT * FROM read_parquet([{listed}], hive_partitioning=false)")
    if summaries:
        con.execute(f"CREATE VIEW summaries AS SELECT * FROM read_parquet({quoted(summaries)})")
    try:
        df = con.execute(sql).fetchdf()
    except duckdb.Error as exc:
        raise click.ClickException(f"query failed: {' '.join(str(exc).split())}") from None
    if fmt == "csv":
        click.echo(df.to_csv(index=False), nl=False)
    elif fmt == "json":
        click.echo(df.to_json(orient="records", indent=1))
    else:
        click.echo(df.to_string(index=False) if len(df) else "(no rows)")


@click.command()
@click.argument("job_dir", type=click.Path(file_okay=False, path_type=Path))
def report(job_dir):
    """Rebuild summaries, maps and the HTML report from the job's Parquet files alone."""
    from idcmap.jobs.service import build_job_outputs, existing_job

    job = existing_job(job_dir)
    build_job_outputs(job)
    click.echo(str(job.report))
