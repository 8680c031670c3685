"""``idcmap score``, ``status``, ``query`` and ``report``."""
from __future__ import annotations

import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import click
from idcmap.models import DEFAULT_MODEL


def _build_outputs(job_dir: Path) -> None:
    """Summaries, maps and report; a map that cannot be built is reported, not fatal."""
    from idcmap.jobs.render.outputs import build_outputs
    from idcmap.jobs.render.summaries import SummaryError

    try:
        result = build_outputs(job_dir)
    except SummaryError as exc:
        raise click.ClickException(str(exc)) from None
    for error in result.get("errors", []):
        click.echo(f"WARNING maps: {error}", err=True)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@click.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("--out", "job_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="The job folder: everything the job writes goes under it.")
@click.option("--model", "model_dir", default=str(DEFAULT_MODEL), show_default="the shipped models/idc-default",
              type=click.Path(path_type=Path), help="Model bundle folder.")
@click.option("--address", default=None, help="Ray cluster to join: 'auto' or HOST:PORT (default: RAY_ADDRESS, "
              "else an embedded local Ray).")
@click.option("--backend", default="onnx", show_default=True, help="onnx, keras or onnx-int8.")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(1, 65536),
              help="Patches per inference call (8: fastest with one inference thread per actor, "
                   "benchmarks/README.md).")
@click.option("--mpp", type=float, default=None, help="Level-0 µm/px for slides whose file does not say.")
@click.option("--actors", type=click.IntRange(1, 1024), default=None, help="Scorer actors, each planning, tiling and scoring with one inference thread (default: one per CPU).")
@click.option("--num-cpus", type=click.IntRange(1, 4096), default=None, help="CPUs of the embedded Ray.")
@click.option("--min-tissue", type=float, default=0.05, show_default=True)
@click.option("--pseudonymize", is_flag=True,
              help="Replace patient and slide ids in all outputs and messages by keyed HMACs.")
@click.option("--key-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="File holding the pseudonym key (default: the IDCMAP_PSEUDONYM_KEY environment variable).")
def score(inputs, job_dir, model_dir, address, backend, batch_size, mpp, actors, num_cpus, min_tissue,
          pseudonymize, key_file):
    """Score slides for IDC into JOB_DIR; re-run the same command to resume."""
    from idcmap.cluster import ray_session
    from idcmap.jobs.engine.run import ScoreSpec, run_scoring
    from idcmap.jobs.inputs import InputError, collect_tasks
    from idcmap.jobs.jobdir.info import package_versions, read_job, write_job
    from idcmap.jobs.jobdir.lock import JobLocked, job_lock
    from idcmap.jobs.jobdir.schema import predictions_path
    from idcmap.jobs.progress import Progress
    from idcmap.jobs.pseudonym import key_id, load_key
    from idcmap.jobs.pseudonym import pseudonymize as pseudonymize_tasks
    from idcmap.model import BundleError, load_bundle

    if key_file is not None and not pseudonymize:
        raise click.UsageError("--key-file is only used with --pseudonymize")
    try:
        tasks = collect_tasks(inputs)
        privacy = {"pseudonymized": False}
        if pseudonymize:
            key = load_key(key_file)
            tasks = pseudonymize_tasks(tasks, key)
            privacy = {"pseudonymized": True, "method": "HMAC-SHA256", "key_id": key_id(key)}
        bundle = load_bundle(model_dir)
    except (InputError, BundleError) as exc:
        raise click.ClickException(str(exc)) from None
    if not tasks:
        raise click.ClickException("no slides found in " + ", ".join(inputs))
    def pending():  # slides without a predictions file; asked again once the lock is held
        return [t for t in tasks if not predictions_path(job_dir, t.patient_id, t.slide_id).is_file()]

    todo = pending()
    if not todo and (job_dir / "summaries.parquet").exists():   # finished: touch nothing, not even the lock
        click.echo(f"{job_dir}: all {len(tasks)} slides are done; nothing to score", err=True)
        return
    os.umask(0o027)  # results hold patient data: readable by owner and group only
    try:
        with job_lock(job_dir):
            for stale in job_dir.rglob(".*.tmp"):   # left by a killed run; we hold the lock
                stale.unlink()
            job = read_job(job_dir)
            if job and job.get("bundle", {}).get("sha256") != bundle.sha256:
                raise click.ClickException(
                    f"{job_dir}: was scored with model {job['bundle'].get('version')}, not {bundle.version}; "
                    "use a new --out for another model")
            if job and job.get("privacy", {"pseudonymized": False}) != privacy:
                was = job.get("privacy", {})
                raise click.ClickException(
                    f"{job_dir}: was scored " + (f"with --pseudonymize (key {was.get('key_id')})"
                                                 if was.get("pseudonymized") else "without --pseudonymize")
                    + "; re-run it the same way, or use a new --out")
            spec = ScoreSpec(job_id=job_dir.resolve().name, bundle=str(Path(model_dir).resolve()),
                             backend=backend, batch_size=batch_size, actors=actors, mpp=mpp,
                             min_tissue=min_tissue)
            todo = pending()
            if not todo:   # done, but killed before its summaries and report were written
                _build_outputs(job_dir)
                return
            known = {(s["patient_id"], s["slide_id"]): s for s in job.get("slides", [])}
            known.update({(t.patient_id, t.slide_id): {"patient_id": t.patient_id, "slide_id": t.slide_id,
                                                      "source": t.name} for t in tasks})
            run = {"started": _now(), "slides_to_score": len(todo)}
            job.update({"job_id": spec.job_id, "spec": spec.to_dict(), "versions": package_versions(),
                        "privacy": privacy,
                        "bundle": {"path": spec.bundle, "sha256": bundle.sha256, "version": bundle.version,
                                   "threshold": bundle.threshold, "architecture": bundle.architecture,
                                   "metrics_kind": bundle.metrics[0],
                                   "metrics": {k: v for k, v in bundle.metrics[1].items()
                                               if isinstance(v, (int, float, str))}},
                        "slides": sorted(known.values(), key=lambda s: (s["patient_id"], s["slide_id"])),
                        "runs": job.get("runs", []) + [run]})
            write_job(job_dir, job)
            progress = Progress(total=len(tasks), already_done=len(tasks) - len(todo))
            click.echo(f"{job_dir}: scoring {len(todo)} of {len(tasks)} slides with {bundle.version} "
                       f"({backend})", err=True)
            t0 = time.time()
            with ray_session(address, num_cpus) as cpus:
                t1 = time.time()
                results = run_scoring(job_dir, todo, spec, cpus, progress)
                run["scoring_seconds"] = round(time.time() - t1, 2)  # without starting Ray
            progress.close()
            failed = [r for r in results if not r.ok]
            run.update({"finished": _now(), "seconds": round(time.time() - t0, 1),
                        "scored": len(results) - len(failed), "failed": len(failed),
                        "patches": sum(r.patches for r in results)})
            write_job(job_dir, job)
            _build_outputs(job_dir)
    except JobLocked as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{job_dir}: {len(results) - len(failed)} slides scored, {len(failed)} failed; "
               f"report: {job_dir / 'report' / 'index.html'}", err=True)
    if failed:
        sys.exit(1)


def _existing_job(job_dir: Path) -> Path:
    if not (job_dir / "job.json").exists() and not (job_dir / "predictions").exists():
        raise click.ClickException(f"{job_dir}: not an idcmap job folder (no job.json)")
    return job_dir


@click.command()
@click.argument("job_dir", type=click.Path(file_okay=False, path_type=Path))
def status(job_dir):
    """Slides done, failed and pending; patches; rate and ETA of a running job."""
    import pyarrow.parquet as pq
    from idcmap.jobs.jobdir.info import read_job
    from idcmap.jobs.jobdir.lock import is_locked
    from idcmap.jobs.jobdir.schema import prediction_files, read_failures

    job = read_job(_existing_job(job_dir))
    files = prediction_files(job_dir)
    done = {(f.parent.name, f.stem) for f in files}
    failures = [f for f in read_failures(job_dir) if (f["patient_id"], f["slide_id"]) not in done]
    slides = {(s["patient_id"], s["slide_id"]) for s in job.get("slides", [])} | done
    failed = {(f["patient_id"], f["slide_id"]) for f in failures}
    pending = slides - done - failed
    patches = sum(pq.read_metadata(f).num_rows for f in files)
    running = is_locked(job_dir)
    click.echo(f"{job_dir}: {'running' if running else 'not running'}")
    click.echo(f"  slides   {len(done)} done, {len(failed)} failed, {len(pending)} pending, {len(slides)} in all")
    click.echo(f"  patches  {patches:,} scored")
    runs = job.get("runs", [])
    if runs:
        last = runs[-1]
        started = datetime.fromisoformat(last["started"]).timestamp()
        if running:
            recent = [f for f in files if f.stat().st_mtime >= started]
            elapsed = max(time.time() - started, 1e-6)
            rate = sum(pq.read_metadata(f).num_rows for f in recent) / elapsed
            eta = (f"{elapsed / len(recent) * len(pending) / 60:.1f} min" if recent else "?")
            click.echo(f"  rate     {rate:,.0f} patches/s in this run; ETA {eta} for {len(pending)} slides")
        else:
            click.echo(f"  last run {last['started']} .. {last.get('finished', 'interrupted')}, "
                       f"{last.get('patches', 0):,} patches in {last.get('seconds', '?')} s")
    for f in failures:
        click.echo(f"  FAILED   {f['patient_id']}/{f['slide_id']}: {f['error']}")


@click.command()
@click.argument("job_dir", type=click.Path(file_okay=False, path_type=Path))
@click.argument("sql")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
def query(job_dir, sql, fmt):
    """Run SQL (DuckDB) over the views `predictions` and `summaries` of a job."""
    import duckdb
    from idcmap.jobs.jobdir.schema import prediction_files

    _existing_job(job_dir)
    con = duckdb.connect()
    if prediction_files(job_dir):
        pattern = str(job_dir / "predictions" / "*" / "*.parquet").replace("'", "''")
        con.execute(f"CREATE VIEW predictions AS SELECT * FROM read_parquet('{pattern}', hive_partitioning=false)")
    if (job_dir / "summaries.parquet").exists():
        path = str(job_dir / "summaries.parquet").replace("'", "''")
        con.execute(f"CREATE VIEW summaries AS SELECT * FROM read_parquet('{path}')")
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
    _build_outputs(_existing_job(job_dir))
    click.echo(f"{job_dir / 'report' / 'index.html'}")
