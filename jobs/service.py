"""The job service: score slides into a job folder, and read where a job stands, from Python.

``idcmap score`` and ``idcmap status`` are thin commands over these functions; a hospital's own
scheduler can call them directly::

    from idcmap.jobs.service import ScoreOptions, score_job, job_status

    result = score_job(["/data/slides/batch-12"], "/results/batch-12", ScoreOptions(address="auto"))
    if result.failed:
        ...  # each SlideResult names its slide and why it failed; re-running resumes
    print(job_status("/results/batch-12"))

Bad input raises an :class:`idcmap.errors.IdcmapError` subclass whose message is one line;
messages for people go to the ``idcmap`` logger, progress to stderr.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from idcmap.errors import InputError, JobError
from idcmap.jobs.engine.run import ScoreSpec, SlideResult
from idcmap.jobs.inputs import SlideTask, collect_tasks
from idcmap.jobs.jobdir.info import package_versions, read_job, write_job
from idcmap.jobs.jobdir.layout import JobDir
from idcmap.jobs.jobdir.lock import is_locked, job_lock
from idcmap.jobs.jobdir.schema import predictions_problem, read_failures
from idcmap.models import DEFAULT_MODEL
from idcmap.slide_tiling import DEFAULT_MIN_TISSUE

log = logging.getLogger("idcmap")


@dataclass
class ScoreOptions:
    """How to score (the options of ``idcmap score``)."""

    model: Path = DEFAULT_MODEL
    address: str | None = None  # Ray cluster ("auto", HOST:PORT); None: RAY_ADDRESS, else embedded
    backend: str = "onnx"
    batch_size: int = 8
    mpp: float | None = None  # level-0 µm/px for slides whose file does not say
    actors: int | None = None
    num_cpus: int | None = None  # CPUs of an embedded Ray
    gpus_per_actor: float = 0.0  # > 0: GPU scorers too (see ScoreSpec)
    min_tissue: float = DEFAULT_MIN_TISSUE
    pseudonymize: bool = False
    key_file: Path | None = None  # else IDCMAP_PSEUDONYM_KEY


@dataclass
class JobResult:
    """What one ``score_job`` call did."""

    job: JobDir
    slides: int  # slides the inputs hold
    results: list[SlideResult] = field(default_factory=list)  # the slides scored or failed in this call
    map_errors: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[SlideResult]:
        return [r for r in self.results if not r.ok]

    @property
    def scored(self) -> int:
        return len(self.results) - len(self.failed)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _tasks(inputs, options: ScoreOptions) -> tuple[list[SlideTask], dict]:
    """The slide tasks of ``inputs`` (pseudonymised if asked) and the job's privacy record."""
    from idcmap.jobs.pseudonym import key_id, load_key, pseudonymize

    tasks = collect_tasks(inputs)
    if not tasks:
        raise InputError("no slides found in " + ", ".join(map(str, inputs)))
    if not options.pseudonymize:
        return tasks, {"pseudonymized": False}
    key = load_key(options.key_file)
    return pseudonymize(tasks, key), {"pseudonymized": True, "method": "HMAC-SHA256", "key_id": key_id(key)}


def _check_same_job(job: JobDir, record: dict, bundle, privacy: dict) -> None:
    """A job folder keeps one model and one privacy setting."""
    if record and record.get("bundle", {}).get("sha256") != bundle.sha256:
        raise JobError(
            f"{job}: was scored with model {record['bundle'].get('version')}, not {bundle.version}; "
            "use a new --out for another model"
        )
    if record and record.get("privacy", {"pseudonymized": False}) != privacy:
        was = record.get("privacy", {})
        raise JobError(
            f"{job}: was scored "
            + (
                f"with --pseudonymize (key {was.get('key_id')})"
                if was.get("pseudonymized")
                else "without --pseudonymize"
            )
            + "; re-run it the same way, or use a new --out"
        )


def _job_record(record: dict, spec: ScoreSpec, bundle, privacy: dict, tasks, run: dict) -> dict:
    """``job.json`` updated for a new run: spec, versions, model, every slide known, the run."""
    known = {(s["patient_id"], s["slide_id"]): s for s in record.get("slides", [])}
    known.update(
        {
            (t.patient_id, t.slide_id): {"patient_id": t.patient_id, "slide_id": t.slide_id, "source": t.name}
            for t in tasks
        }
    )
    kind, metrics = bundle.metrics
    return record | {
        "job_id": spec.job_id,
        "spec": spec.to_dict(),
        "versions": package_versions(),
        "privacy": privacy,
        "bundle": {
            "path": spec.bundle,
            "sha256": bundle.sha256,
            "version": bundle.version,
            "threshold": bundle.threshold,
            "architecture": bundle.architecture,
            "metrics_kind": kind,
            "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))},
        },
        "slides": sorted(known.values(), key=lambda s: (s["patient_id"], s["slide_id"])),
        "runs": record.get("runs", []) + [run],
    }


def _done(path: Path) -> bool:
    """A slide is done when its predictions file exists and reads back (footer, idcmap metadata)."""
    return path.is_file() and predictions_problem(path) is None


def _set_aside_damaged(job: JobDir) -> None:
    """Rename predictions files that do not read back (an interrupted copy, a failing mount) out of
    the way, so their slides are scored again; the old bytes are kept for inspection."""
    for path in job.prediction_files():
        if (problem := predictions_problem(path)) is not None:
            aside = path.with_name(f"{path.name}.damaged-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}")
            path.rename(aside)
            log.warning("%s; moved aside to %s, scoring the slide again", problem, aside.name)


def build_job_outputs(job: JobDir) -> list[str]:
    """Summaries, maps and report; returns the maps that could not be built (each logged)."""
    from idcmap.jobs.render.outputs import build_outputs

    errors = build_outputs(job).get("errors", [])
    for error in errors:
        log.warning("maps: %s", error)
    return errors


def score_job(inputs, job_dir, options: ScoreOptions | None = None) -> JobResult:
    """Score the slides of ``inputs`` into ``job_dir``; a re-run scores only what is missing.

    One writer per job folder (a second raises :class:`~idcmap.jobs.jobdir.lock.JobLocked`).
    Slides that fail are in ``result.failed`` with their reason; the others are written."""
    from idcmap.model import load_bundle
    from idcmap.model.backends import check_backend

    options = options or ScoreOptions()
    job = JobDir(job_dir)
    tasks, privacy = _tasks(inputs, options)
    bundle = load_bundle(options.model)
    check_backend(bundle, options.backend)  # before any slide is given to an actor that cannot start

    def pending():  # slides without a readable predictions file; asked again once the lock is held
        return [t for t in tasks if not _done(job.predictions(t.patient_id, t.slide_id))]

    result = JobResult(job, len(tasks))
    if not pending() and job.summaries.exists():  # finished: touch nothing, not even the lock
        log.info("%s: all %d slides are done; nothing to score", job, len(tasks))
        return result
    os.umask(0o027)  # results hold patient data: readable by owner and group only
    with job_lock(job):
        for stale in job.temporary_files():  # left by a killed run; we hold the lock
            stale.unlink()
        _set_aside_damaged(job)
        record = read_job(job)
        _check_same_job(job, record, bundle, privacy)
        todo = pending()
        if todo:  # else done, but killed before its summaries and report were written
            spec = ScoreSpec(
                job_id=job.name,
                bundle=str(Path(options.model).resolve()),
                backend=options.backend,
                batch_size=options.batch_size,
                actors=options.actors,
                gpus_per_actor=options.gpus_per_actor,
                mpp=options.mpp,
                min_tissue=options.min_tissue,
            )
            record = _job_record(
                record, spec, bundle, privacy, tasks, {"started": _now(), "slides_to_score": len(todo)}
            )
            result.results = _run(job, record, todo, len(tasks), spec, bundle, options)
        result.map_errors = build_job_outputs(job)
    if todo:
        log.info("%s: %d slides scored, %d failed; report: %s", job, result.scored, len(result.failed), job.report)
    return result


def _run(job: JobDir, record: dict, todo, total: int, spec: ScoreSpec, bundle, options: ScoreOptions):
    """Score ``todo`` on Ray; ``job.json`` (``record``) written before and after, with this run's
    times and counts."""
    from idcmap.cluster import ray_nodes, ray_session
    from idcmap.jobs.engine.run import node_record, run_scoring
    from idcmap.jobs.progress import Progress

    run = record["runs"][-1]
    write_job(job, record)
    progress = Progress(total=total, already_done=total - len(todo))
    log.info("%s: scoring %d of %d slides with %s (%s)", job, len(todo), total, bundle.version, options.backend)
    t0 = time.time()
    with ray_session(options.address, options.num_cpus) as cpus:
        t1 = time.time()
        nodes: dict[str, dict] = {}  # node -> slides planned, patches scored; CPUs
        run["nodes"] = nodes
        results = run_scoring(job, todo, spec, cpus, progress, nodes, on_tick=lambda: write_job(job, record))
        run["scoring_seconds"] = round(time.time() - t1, 2)  # without starting Ray
        for n in ray_nodes():
            node_record(nodes, n.pop("name")).update(n)
    progress.close()
    failed = sum(not r.ok for r in results)
    run.update(
        finished=_now(),
        seconds=round(time.time() - t0, 1),
        scored=len(results) - failed,
        failed=failed,
        patches=sum(r.patches for r in results),
    )
    write_job(job, record)
    return results


@dataclass
class JobStatus:
    """Where a job stands (``idcmap status``)."""

    job: JobDir
    running: bool
    done: int
    failed: list[dict]  # failure records of slides not done since
    damaged: list[str]  # predictions files that do not read back, each with its reason
    pending: int
    slides: int
    patches: int
    last_run: dict | None
    rate: float | None = None  # patches/s of the current run, while running
    eta_minutes: float | None = None  # for the pending slides, while running
    elapsed: float | None = None  # seconds since the current run started, while running


def existing_job(job_dir) -> JobDir:
    """The job folder ``job_dir``, which ``idcmap score`` must have written."""
    job = JobDir(job_dir)
    if not job.is_job():
        raise JobError(f"{job}: not an idcmap job folder (no job.json)")
    return job


def readable_predictions(job: JobDir) -> tuple[list[Path], list[str]]:
    """(predictions files that read back, one-line reasons for those that do not)."""
    files, damaged = [], []
    for path in job.prediction_files():
        problem = predictions_problem(path)
        if problem is None:
            files.append(path)
        else:
            damaged.append(problem)
    return files, damaged


def job_status(job_dir) -> JobStatus:
    """Slides done, failed and pending, patches scored; the running job's rate and ETA."""
    import pyarrow.parquet as pq

    job = existing_job(job_dir)
    record = read_job(job)
    files, damaged = readable_predictions(job)
    done = {(f.parent.name, f.stem) for f in files}
    failures = [f for f in read_failures(job) if (f["patient_id"], f["slide_id"]) not in done]
    slides = {(s["patient_id"], s["slide_id"]) for s in record.get("slides", [])} | done
    pending = len(slides - done - {(f["patient_id"], f["slide_id"]) for f in failures})
    runs = record.get("runs", [])
    rows = {f: pq.read_metadata(f).num_rows for f in files}
    last_run = runs[-1] if runs else None
    done_rows = sum(rows.values())
    status = JobStatus(job, is_locked(job), len(done), failures, damaged, pending, len(slides), done_rows, last_run)
    if status.running and status.last_run:
        started = datetime.fromisoformat(status.last_run["started"]).timestamp()
        recent = [f for f in files if f.stat().st_mtime >= started]
        elapsed = status.elapsed = max(time.time() - started, 1e-6)
        status.rate = sum(rows[f] for f in recent) / elapsed
        status.eta_minutes = elapsed / len(recent) * pending / 60 if recent else None
    return status
