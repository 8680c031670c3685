"""The scoring job: slides -> plan -> cut and score chunks of regions -> one Parquet per slide.

A pool of scorer actors, one per CPU, each holding the model (loaded once, one ONNX thread), does
all the work: it plans a slide (level, tissue, regions), and in one call cuts a chunk's tissue
patches and scores them, so pixels never leave the process that decoded them (no object store
copies, no inference threads competing with tiling processes for the same cores). An actor gets
the chunks of the slides it planned (it keeps the slide open: tiles two chunks share are decoded
once) and, when it has none and no slide is left to plan, helps with other actors' chunks. The
driver keeps a bounded number of slides being planned and one call per actor, so memory does not
grow with the number or size of slides; it receives only coordinates and probabilities, and writes
each slide's file when all its chunks are scored (temporary name, then rename). A slide's file
existing means it is done: re-running the same command scores only what is missing. Actors restart
when their process dies and their calls are retried.
"""
from __future__ import annotations

import base64
import time
from collections import deque
from dataclasses import asdict, dataclass, field, replace

import cv2
import numpy as np
import pyarrow as pa
import ray

from idcmap.jobs.inputs import SlideTask
from idcmap.jobs.jobdir.layout import JobDir
from idcmap.jobs.jobdir.schema import (
    SlideMeta,
    write_failure,
    write_predictions,
)
from idcmap.jobs.progress import Progress
from idcmap.model import load_bundle, make_backend
from idcmap.model.scoring import with_context
from idcmap.slide_tiling import (
    SlideError,
    SlidePlan,
    TilingSpec,
    iter_patches,
    open_slide,
    plan_slide,
)

CHUNK_PATCHES = 1024           # grid patches per scoring call (before the tissue filter)
CALLS_PER_ACTOR = 1            # a call queued behind one that crashes its actor would share its retries
                               # (and two per actor measured 8 % slower: benchmarks/README.md)


@dataclass
class ScoreSpec:
    job_id: str
    bundle: str
    backend: str = "onnx"
    batch_size: int = 8                 # patches per inference call: small batches stay in the core's L2
    actors: int | None = None           # scorer actors; default: one per CPU
    threads_per_actor: int = 1          # inference threads of each actor
    mpp: float | None = None            # level-0 mpp for slides whose file (and manifest) does not say
    stride: int | None = None           # default: the bundle's patch size (no overlap)
    min_tissue: float = 0.05
    min_idc_area_mm2: float = 0.2
    max_slides_in_flight: int = 2       # slides being planned at once

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SlideResult:
    task: SlideTask
    ok: bool
    error: str = ""
    patches: int = 0
    seconds: float = 0.0


def _one_line(exc: BaseException, source: str) -> str:
    """The user-facing reason of a failure: the SlideError's own line, or file + exception."""
    cause = getattr(exc, "cause", None) or exc
    if isinstance(cause, SlideError):
        return str(cause)
    text = " ".join(str(cause).split()) or type(cause).__name__
    return f"{source}: {type(cause).__name__}: {text}"


# --- the actor -----------------------------------------------------------------------------------
@ray.remote(num_cpus=1, max_restarts=-1, max_task_retries=3)
class Scorer:
    """Holds the model: loaded once per actor (and again after a restart), verified against its hashes.

    A call whose actor dies is retried three times; a slide that kills the process a fourth time
    (a codec crash) fails alone with its reason."""

    def __init__(self, bundle_dir: str, backend: str, threads: int, batch_size: int):
        self.backend = make_backend(load_bundle(bundle_dir), backend, threads=threads, batch_size=batch_size,
                                    shared_cores=True)
        self._open: tuple[str, object] | None = None   # (source, reader) of the last slide

    def _reader(self, source: str):
        """The slide, kept open between calls: its tile cache serves the tiles that a slide's next
        chunk shares with the last one (the driver gives an actor the chunks of the slides it planned)."""
        if self._open and self._open[0] == source:
            return self._open[1]
        self._close()
        reader = open_slide(source)
        self._open = source, reader
        return reader

    def _close(self):
        if self._open:
            self._open[1].close()
            self._open = None

    def plan(self, task: SlideTask, spec: TilingSpec, fallback_mpp: float | None):
        """Open the slide and plan it. Returns (slim plan, slide facts) or a failure string.

        Level-0 mpp: the manifest's for this slide, else the file's, else ``fallback_mpp`` (--mpp)."""
        try:
            reader = self._reader(task.source)
            mpp = task.mpp if task.mpp is not None else (fallback_mpp if reader.mpp is None else None)
            plan = plan_slide(reader, replace(spec, mpp=mpp))
            # the thumbnail tissue was fitted on is the one stored: the slide is read once
            ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(plan.thumbnail, cv2.COLOR_RGB2BGR),
                                    [cv2.IMWRITE_JPEG_QUALITY, 85])
            facts = {"width0": reader.dimensions[0], "height0": reader.dimensions[1],
                     "mpp": list(plan.level.mpp0), "thumbnail_downsample": plan.tissue.downsample,
                     "thumbnail_jpeg": base64.b64encode(jpeg.tobytes()).decode() if ok else ""}
            return plan.slim(), facts
        except Exception as exc:  # a SlideError's own line; a reader bug or codec crash: still one line
            self._close()
            return _one_line(exc, task.source)

    def score(self, source: str, plan: SlidePlan):
        """Cut the tissue patches of the plan's regions and score them: dict of arrays, no pixels."""
        try:
            batches = list(iter_patches(self._reader(source), plan))
        except Exception:
            self._close()
            raise
        if not batches:
            return None
        chunk = {k: np.concatenate([getattr(b, k) for b in batches])
                 for k in ("cols", "rows", "x", "y", "tissue_fraction")}
        chunk["prob_patch"] = self.backend.predict(np.concatenate([b.pixels for b in batches]))
        return chunk


# --- the driver ------------------------------------------------------------------------------------
@dataclass
class _SlideState:
    task: SlideTask
    plan: SlidePlan
    facts: dict
    chunks_total: int
    started: float
    actor: int = -1                     # the actor that planned it (and keeps it open)
    parts: list = field(default_factory=list)
    chunks_done: int = 0
    failed: str = ""


def _chunks(plan: SlidePlan) -> list[list]:
    """Group the plan's regions into chunks of about CHUNK_PATCHES grid patches."""
    chunks, current, size = [], [], 0
    for region in plan.regions:
        c0, r0, c1, r1 = region
        current.append(region)
        size += (c1 - c0) * (r1 - r0)
        if size >= CHUNK_PATCHES:
            chunks.append(current)
            current, size = [], 0
    if current:
        chunks.append(current)
    return chunks


def run_scoring(job_dir: JobDir, tasks: list[SlideTask], spec: ScoreSpec, cpus: int,
                progress: Progress) -> list[SlideResult]:
    """Score ``tasks`` (the slides not done yet) into ``job_dir``. Ray must be initialised."""
    bundle = load_bundle(spec.bundle)
    tiling = TilingSpec(target_mpp=bundle.target_mpp, patch_size=bundle.meta["input"]["shape"][0],
                        stride=spec.stride or bundle.meta["input"]["shape"][0],
                        min_tissue=spec.min_tissue)
    n_actors = spec.actors or cpus
    actors = [Scorer.options(num_cpus=min(1.0, cpus / n_actors)).remote(
        spec.bundle, spec.backend, spec.threads_per_actor, spec.batch_size) for _ in range(n_actors)]
    busy = [0] * n_actors                # calls queued or running on each actor

    todo = deque(tasks)
    planning: dict = {}                  # plan ref -> (task, actor)
    scoring: dict = {}                   # score ref -> (slide state, actor)
    ready_chunks: list = []              # (state, regions), each slide's in raster order
    results: list[SlideResult] = []

    def finish(state: _SlideState):
        task = state.task
        if state.failed:
            state.failed = task.redact(state.failed)
            try:
                write_failure(job_dir, task.patient_id, task.slide_id, task.name, state.failed)
            except OSError as exc:  # e.g. a read-only job folder: still report it, go on
                state.failed += f" (failure record not written: {exc.strerror or exc})"
            results.append(SlideResult(task, False, state.failed, seconds=time.time() - state.started))
            progress.slide_done(task.key, 0, failed=state.failed)
            return
        try:
            rows = _table(state, spec, bundle)
            meta = SlideMeta(job_id=spec.job_id, patient_id=task.patient_id, slide_id=task.slide_id,
                             source=task.name, bundle_sha256=bundle.sha256, model_version=bundle.version,
                             threshold=bundle.threshold, job_spec=spec.to_dict(),
                             target_mpp=tiling.target_mpp, patch_size=tiling.patch_size,
                             stride=tiling.stride, cols=state.plan.grid.cols, rows=state.plan.grid.rows,
                             level=state.plan.level.level, **state.facts)
            write_predictions(job_dir, rows, meta)
        except OSError as exc:
            state.failed = f"{job_dir.predictions(task.patient_id, task.slide_id)}: cannot write: {exc.strerror or exc}"
            return finish(state)
        job_dir.failure(task.patient_id, task.slide_id).unlink(missing_ok=True)
        results.append(SlideResult(task, True, patches=rows.num_rows, seconds=time.time() - state.started))
        progress.slide_done(task.key, rows.num_rows)

    def submit() -> bool:
        """Give the least busy actor its next call: the next chunk of a slide it planned (its tiles
        may still be in that actor's cache), else plan a new slide, else help with another actor's
        slide. False when no actor is free or there is nothing to give."""
        i = min(range(n_actors), key=busy.__getitem__)
        if busy[i] >= CALLS_PER_ACTOR:
            return False
        own = next((k for k, (state, _) in enumerate(ready_chunks) if state.actor == i), None)
        if own is None and todo and len(planning) < spec.max_slides_in_flight:
            task = todo.popleft()
            planning[actors[i].plan.remote(task, tiling, spec.mpp)] = task, i
        elif ready_chunks:  # another actor's slide: from its end, away from the chunks its owner reads next
            state, regions = ready_chunks.pop(len(ready_chunks) - 1 if own is None else own)
            if state.failed:  # an earlier chunk failed the slide: no need to score the rest
                chunk_done(state)
                return True
            scoring[actors[i].score.remote(state.task.source, state.plan.slim(regions))] = state, i
        else:
            return False
        busy[i] += 1
        return True

    def chunk_done(state: _SlideState):
        state.chunks_done += 1
        if state.chunks_done == state.chunks_total:
            if not state.failed and not state.parts:
                state.failed = (f"{state.task.source}: no tissue found: no patch reaches "
                                f"{tiling.min_tissue:.0%} tissue")
            completed.append(state)

    completed: list[_SlideState] = []  # slides whose file is written once the actors have new calls
    while todo or planning or scoring or ready_chunks or completed:
        while submit():
            pass
        for state in completed:   # writing a file takes a while: the actors are busy meanwhile
            finish(state)
        completed.clear()
        if not (planning or scoring):
            continue
        done, _ = ray.wait(list(planning) + list(scoring), num_returns=1, timeout=1.0)
        progress.tick()
        for ref in done:
            if ref in planning:
                task, i = planning.pop(ref)
                busy[i] -= 1
                try:
                    out = ray.get(ref)
                except (ray.exceptions.RayTaskError, ray.exceptions.RayActorError) as exc:
                    out = _one_line(exc, task.source)
                if isinstance(out, str):
                    completed.append(_SlideState(task, None, {}, 0, time.time(), failed=out))
                    continue
                plan, facts = out
                chunks = _chunks(plan)
                state = _SlideState(task, plan, facts, len(chunks), time.time(), actor=i)
                progress.slide_started(task.key)
                if not chunks:
                    state.failed = f"{task.source}: no tissue found at {tiling.target_mpp:g} µm/px"
                    completed.append(state)
                ready_chunks.extend((state, c) for c in chunks)
            else:
                state, i = scoring.pop(ref)
                busy[i] -= 1
                try:
                    part = ray.get(ref)
                    if part is not None and not state.failed:
                        state.parts.append(part)
                        progress.patches_scored(len(part["prob_patch"]))
                except (ray.exceptions.RayTaskError, ray.exceptions.RayActorError) as exc:
                    if not state.failed:
                        state.failed = _one_line(exc, state.task.source)
                chunk_done(state)
    for actor in actors:
        ray.kill(actor)
    return results


def _table(state: _SlideState, spec: ScoreSpec, bundle) -> pa.Table:
    """The slide's rows, sorted by (row, col) so that the file does not depend on scheduling."""
    parts = state.parts
    cols = np.concatenate([p["cols"] for p in parts])
    rows = np.concatenate([p["rows"] for p in parts])
    order = np.lexsort((cols, rows))
    n = len(order)
    take = lambda k: np.concatenate([p[k] for p in parts])[order]  # noqa: E731
    rows, cols = rows[order], cols[order]
    prob_patch = take("prob_patch").astype(np.float32)
    task = state.task
    return pa.table({
        "job_id": pa.array([spec.job_id] * n, pa.string()),
        "patient_id": pa.array([task.patient_id] * n, pa.string()),
        "slide_id": pa.array([task.slide_id] * n, pa.string()),
        "x": take("x").astype(np.int64), "y": take("y").astype(np.int64),
        "col": cols.astype(np.int32), "row": rows.astype(np.int32),
        "level0_patch_size": np.full(n, state.plan.grid.level0_patch_size, np.float32),
        "tissue_fraction": take("tissue_fraction").astype(np.float32),
        "prob_idc": with_context(prob_patch, rows, cols, None, bundle.context_weight),
        "prob_patch": prob_patch,
        "model_version": pa.array([bundle.version] * n, pa.string()),
    })
