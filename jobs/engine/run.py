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
import logging
import os
import re
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

import cv2
import numpy as np
import pyarrow as pa
import ray

from idcmap.errors import IdcmapError
from idcmap.jobs.engine.scheduler import PlanCall, Scheduler, ScoredChunk, SlideFacts, SlideState
from idcmap.jobs.inputs import SlideTask
from idcmap.jobs.jobdir.layout import JobDir
from idcmap.jobs.jobdir.schema import SlideMeta, write_failure, write_predictions
from idcmap.jobs.progress import Progress
from idcmap.model import load_bundle, make_backend
from idcmap.slide_tiling import (
    DEFAULT_MIN_TISSUE,
    SlideError,
    SlidePlan,
    TilingSpec,
    iter_patches,
    open_slide,
    plan_slide,
)

log = logging.getLogger("idcmap")


@dataclass
class ScoreSpec:
    job_id: str
    bundle: str
    backend: str = "onnx"
    batch_size: int = 8  # patches per inference call: small batches stay in the core's L2
    actors: int | None = None  # scorer actors; default: one per CPU
    threads_per_actor: int = 1  # inference threads of each actor
    gpus_per_actor: float = 0.0  # > 0: GPU scorers too, each taking this much of a GPU
    mpp: float | None = None  # level-0 mpp for slides whose file (and manifest) does not say
    stride: int | None = None  # default: the bundle's patch size (no overlap)
    min_tissue: float = DEFAULT_MIN_TISSUE
    min_idc_area_mm2: float = 0.2
    max_slides_in_flight: int = 2  # slides being planned at once

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
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(cause)).split("Traceback (most recent call last)")[0]
    return f"{source}: {type(cause).__name__}: {' '.join(text.split()) or type(cause).__name__}"


# --- the actor -----------------------------------------------------------------------------------
@ray.remote(num_cpus=1, max_restarts=0)
class Scorer:
    """Holds the model: loaded once per actor, verified against its hashes.

    An actor whose process or node dies is replaced by the driver, and the call it was running
    goes to another actor (``_returned``): up to four times for one slide, so a slide that kills
    the process every time (a codec crash) fails alone with its reason."""

    def __init__(self, bundle_dir: str, backend: str, threads: int, batch_size: int, gpu: bool = False):
        context = ray.get_runtime_context()
        self.node = f"{ray.util.get_node_ip_address()} ({context.get_node_id()[:8]})"  # one machine: many nodes
        self.multi_node = sum(n["Alive"] for n in ray.nodes()) > 1
        self.problem = ""  # why this node cannot score (its copy of the bundle), told by ready()
        try:
            self.backend = make_backend(
                load_bundle(bundle_dir), backend, threads=threads, batch_size=batch_size, shared_cores=True, gpu=gpu
            )
        except IdcmapError as exc:
            self.problem = f"node {self.node}: {exc}"
        self._open: tuple[str, object] | None = None  # (source, reader) of the last slide

    def ready(self) -> tuple[str, str, str]:
        """(this actor's node: address and id, why it cannot score or "", where it infers: CPU or GPU)."""
        return self.node, self.problem, "" if self.problem else self.backend.device

    def _reader(self, source: str):
        """The slide, kept open between calls: its tile cache serves the tiles that a slide's next
        chunk shares with the last one (the scheduler gives an actor the chunks of the slides it planned)."""
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

    def plan(self, task: SlideTask, spec: TilingSpec, fallback_mpp: float | None) -> tuple[SlidePlan, SlideFacts]:
        """Open the slide and plan it: (slim plan, slide facts).

        Level-0 mpp: the manifest's for this slide, else the file's, else ``fallback_mpp`` (--mpp)."""
        try:
            reader = self._reader(task.source)
            mpp = task.mpp if task.mpp is not None else (fallback_mpp if reader.mpp is None else None)
            plan = plan_slide(reader, replace(spec, mpp=mpp))
        except SlideError as exc:
            self._close()
            if self.multi_node and not os.path.exists(task.source):  # each node must see the same paths
                raise SlideError(exc.path, f"{exc.reason} on node {self.node}") from None
            raise
        except Exception:
            self._close()
            raise
        # the thumbnail tissue was fitted on is the one stored: the slide is read once
        assert plan.thumbnail is not None, "plan_slide keeps the thumbnail (only slim() drops it)"
        ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(plan.thumbnail, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
        mpp_x, mpp_y = plan.level.mpp0
        return plan.slim(), SlideFacts(
            reader.dimensions[0],
            reader.dimensions[1],
            (float(mpp_x), float(mpp_y)),
            plan.tissue.downsample,
            base64.b64encode(jpeg.tobytes()).decode() if ok else "",
        )

    def score(self, source: str, plan: SlidePlan) -> ScoredChunk | None:
        """Cut the tissue patches of the plan's regions and score them (None: no tissue patch)."""
        try:
            # each patch beside its neighbourhood, for a network that sees it
            batches = list(iter_patches(self._reader(source), plan, self.backend.bundle.neighbourhood))
        except Exception:
            self._close()
            raise
        if not batches:
            return None
        cat = lambda k: np.concatenate([getattr(b, k) for b in batches])  # noqa: E731
        return ScoredChunk(
            cat("cols"), cat("rows"), cat("x"), cat("y"), cat("tissue_fraction"), self.backend.predict(cat("pixels"))
        )


# --- the driver ------------------------------------------------------------------------------------
#: how long a job with work left but no live scorer (every node that could run one is gone) waits
#: for capacity before the remaining slides fail (a re-run resumes them)
CAPACITY_WAIT_S = 120.0
GROW_EVERY_S = 5.0  # how often the cluster is looked at for CPUs that joined
GPU_BATCH = 256  # patches per inference call of a GPU scorer (at least)


#: a slide whose calls lost their scorer this many times fails (a slide that crashes the process
#: does so every time; a node lost mid-call costs a call one)
MAX_LOST_CALLS = 4
#: a call's actor died under it: its process (ActorDiedError, or ActorUnavailableError when Ray
#: cannot tell whether the call ran) or its node
LOST = (
    ray.exceptions.RayActorError,
    ray.exceptions.NodeDiedError,
    ray.exceptions.ObjectLostError,
    ray.exceptions.OwnerDiedError,
)


def _alive(resource: str) -> float:
    return sum(n["Resources"].get(resource, 0) for n in ray.nodes() if n["Alive"])


def node_record(nodes: dict, name: str) -> dict:
    """The entry of ``job.json``'s run["nodes"] for node ``name``."""
    return nodes.setdefault(name, {"slides_planned": 0, "patches": 0})


class _Pool:
    """The scorer actors: one per CPU of the cluster (CPUs that join get theirs) and, with
    ``gpus_per_actor``, GPU scorers beside them (each takes that much of a GPU and no CPU of Ray's
    count: its tiling shares the node's cores); an actor is given calls once it has answered
    ``ready``; an actor whose node is lost is retired and the pool grows back where there is room."""

    def __init__(self, spec: ScoreSpec, sched: Scheduler, cpus: int, tiling: TilingSpec, nodes: dict):
        self.spec, self.sched, self.tiling, self.nodes = spec, sched, tiling, nodes
        self.cpus_per_actor = min(1.0, cpus / (spec.actors or cpus))
        self.handles: dict[int, Any] = {}  # live or starting actors (Ray actor handles)
        self.gpu: set[int] = set()  # the GPU scorers among them
        self.node: dict[int, str] = {}  # actor -> its node's address
        self.starting: dict = {}  # ready() ref -> actor
        self.broken: set[str] = set()  # nodes that cannot load the bundle
        self.told_no_gpu = False
        self.grown = 0.0
        self.grow()

    def grow(self) -> None:
        """Start the scorers the cluster has room for and does not have yet."""
        self.grown = time.monotonic()
        cpu_target = self.spec.actors or int(_alive("CPU")) - len(self.broken)
        self._add(cpu_target - (len(self.handles) - len(self.gpu)), gpu=False)
        if self.spec.gpus_per_actor:
            gpu_target = int(_alive("GPU") / self.spec.gpus_per_actor + 1e-9)
            if not gpu_target and not self.told_no_gpu:
                log.warning("--gpus-per-actor: the cluster has no GPU; scoring on CPUs (GPUs that join are used)")
                self.told_no_gpu = True
            self._add(gpu_target - len(self.gpu), gpu=True)

    def _add(self, n: int, gpu: bool) -> None:
        resources = {"num_cpus": 0, "num_gpus": self.spec.gpus_per_actor} if gpu else {"num_cpus": self.cpus_per_actor}
        for _ in range(n):
            i = self.sched.add_actor()
            self.handles[i] = Scorer.options(**resources).remote(  # type: ignore[attr-defined]
                self.spec.bundle,
                self.spec.backend,
                self.spec.threads_per_actor,
                max(self.spec.batch_size, GPU_BATCH) if gpu else self.spec.batch_size,
                gpu,
            )
            if gpu:
                self.gpu.add(i)
            self.starting[self.handles[i].ready.remote()] = i

    def answered(self, ref) -> None:
        """An actor's ready() returned: it gets calls, or is retired (its node cannot score)."""
        i = self.starting.pop(ref)
        try:
            self.node[i], problem, device = ray.get(ref)
        except ray.exceptions.RayActorError:  # died while starting (its node lost): the pool grows back
            return self.retire(i)
        if problem:
            log.warning("%s; no scorer runs there", problem)
            self.broken.add(self.node[i])
            return self.retire(i)
        if i in self.gpu:
            record = node_record(self.nodes, self.node[i])
            if device != "GPU" and "gpu_scorers" not in record:
                log.warning(
                    "node %s: its GPU scorers infer on the CPU: the %s backend found no usable GPU there%s",
                    self.node[i],
                    self.spec.backend,
                    " (onnxruntime-gpu installed?)" if self.spec.backend.startswith("onnx") else "",
                )
            record["gpu_scorers"] = record.get("gpu_scorers", 0) + 1
            record["gpu_device"] = device
        self.sched.set_available(i, True)

    def retire(self, i: int) -> None:
        if (handle := self.handles.pop(i, None)) is not None:
            ray.kill(handle, no_restart=True)
        self.gpu.discard(i)
        self.sched.set_available(i, False)

    def call(self, call) -> object:
        actor = self.handles[call.actor]
        if isinstance(call, PlanCall):
            return actor.plan.remote(call.task, self.tiling, self.spec.mpp)
        return actor.score.remote(call.task.source, call.region_plan())

    def close(self) -> None:
        for i in list(self.handles):
            self.retire(i)


def run_scoring(
    job_dir: JobDir,
    tasks: list[SlideTask],
    spec: ScoreSpec,
    cpus: int,
    progress: Progress,
    nodes: dict | None = None,
    on_tick=None,
) -> list[SlideResult]:
    """Score ``tasks`` (the slides not done yet) into ``job_dir``. Ray must be initialised.
    ``nodes`` is filled with each node's slides planned and patches scored as they happen;
    ``on_tick()`` is called every few seconds meanwhile (to save them)."""
    bundle = load_bundle(spec.bundle)
    size = bundle.patch_size
    tiling = TilingSpec(
        target_mpp=bundle.target_mpp, patch_size=size, stride=spec.stride or size, min_tissue=spec.min_tissue
    )
    if bundle.neighbourhood and tiling.stride != size:
        raise IdcmapError(f"{spec.bundle}: its network sees each patch's neighbourhood; score it with stride {size}")
    sched = Scheduler(tasks, 0, spec.max_slides_in_flight, tiling.min_tissue, tiling.target_mpp)
    nodes = {} if nodes is None else nodes
    pool = _Pool(spec, sched, cpus, tiling, nodes)
    out: dict = {}  # ref -> call
    results: list[SlideResult] = []
    idle_since = None  # work left, no live actor: since when
    while not sched.finished:
        while (call := sched.next_call()) is not None:
            out[pool.call(call)] = call
        for state in sched.take_completed():  # writing a file takes a while: the actors are busy meanwhile
            results.append(_finish(job_dir, state, spec, tiling, bundle))
            progress.slide_done(state.task.key, results[-1].patches, failed=state.failed)
        if time.monotonic() - pool.grown > GROW_EVERY_S:
            pool.grow()
            if on_tick:
                on_tick()
        idle_since = None if out or any(sched.available) else (idle_since or time.monotonic())
        if idle_since and time.monotonic() - idle_since > CAPACITY_WAIT_S:
            sched.fail_remaining(f"no node left to score on (waited {CAPACITY_WAIT_S:.0f} s); re-run to resume")
            continue
        waiting = list(out) + list(pool.starting)
        if not waiting:  # no actor running or starting: wait for capacity (or for the limit)
            time.sleep(1.0)
            continue
        done, _ = ray.wait(waiting, num_returns=1, timeout=1.0)
        progress.tick()
        for ref in done:
            if ref in pool.starting:
                pool.answered(ref)
            else:
                _returned(ref, out.pop(ref), sched, pool, progress, nodes)
    pool.close()
    return results


def _returned(ref, call, sched: Scheduler, pool: _Pool, progress: Progress, nodes: dict) -> None:
    """Hand a finished call's outcome to the scheduler (a node lost: its work is queued again)."""
    try:
        value = ray.get(ref)
    except LOST as exc:  # the actor is replaced; the call goes to another one, or its slide fails
        pool.retire(call.actor)
        pool.grow()
        reason = _one_line(exc, call.task.source)
        if sched.lost(call, f"{reason} (its scorer died {MAX_LOST_CALLS} times on it)", MAX_LOST_CALLS):
            log.debug("%s: its scorer died, the call goes to another one (%s)", call.task.key, reason)
        return
    except ray.exceptions.RayTaskError as exc:  # the slide's own error
        sched.failed(call, _one_line(exc, call.task.source))
        return
    node = node_record(nodes, pool.node.get(call.actor, "?"))
    if isinstance(call, PlanCall):
        sched.planned(call, *value)
        node["slides_planned"] += 1
        progress.slide_started(call.task.key)
    else:
        sched.scored(call, value)
        if value is not None and not call.slide.failed:
            node["patches"] += len(value.prob_patch)
            progress.patches_scored(len(value.prob_patch))


def _finish(job_dir: JobDir, state: SlideState, spec: ScoreSpec, tiling: TilingSpec, bundle) -> SlideResult:
    """Write a completed slide's predictions, or its failure record; its result."""
    task, f, plan = state.task, state.facts, state.plan
    if not state.failed:
        assert f is not None and plan is not None, "a slide that did not fail was planned"
        try:
            rows = _table(state, spec, bundle, plan.grid.level0_patch_size)
            meta = SlideMeta(
                job_id=spec.job_id,
                patient_id=task.patient_id,
                slide_id=task.slide_id,
                source=task.name,
                bundle_sha256=bundle.sha256,
                model_version=bundle.version,
                threshold=bundle.threshold,
                job_spec=spec.to_dict(),
                width0=f.width0,
                height0=f.height0,
                mpp=f.mpp,
                target_mpp=tiling.target_mpp,
                patch_size=tiling.patch_size,
                stride=tiling.stride,
                cols=plan.grid.cols,
                rows=plan.grid.rows,
                level=plan.level.level,
                thumbnail_downsample=f.thumbnail_downsample,
                thumbnail_jpeg=f.thumbnail_jpeg,
            )
            write_predictions(job_dir, rows, meta)
        except OSError as exc:
            state.failed = f"{job_dir.predictions(task.patient_id, task.slide_id)}: cannot write: {exc.strerror or exc}"
        else:
            job_dir.failure(task.patient_id, task.slide_id).unlink(missing_ok=True)
            return SlideResult(task, True, patches=rows.num_rows, seconds=time.time() - state.started)
    state.failed = task.redact(state.failed)
    try:
        write_failure(job_dir, task.patient_id, task.slide_id, task.name, state.failed)
    except OSError as exc:  # e.g. a read-only job folder: still report it, go on
        state.failed += f" (failure record not written: {exc.strerror or exc})"
    return SlideResult(task, False, state.failed, seconds=time.time() - state.started)


def _table(state: SlideState, spec: ScoreSpec, bundle, level0_patch_size: float) -> pa.Table:
    """The slide's rows, sorted by (row, col) so that the file does not depend on scheduling."""
    parts = state.parts
    cols = np.concatenate([p.cols for p in parts])
    rows = np.concatenate([p.rows for p in parts])
    order = np.lexsort((cols, rows))
    n = len(order)
    take = lambda k: np.concatenate([getattr(p, k) for p in parts])[order]  # noqa: E731
    rows, cols = rows[order], cols[order]
    prob_patch = take("prob_patch").astype(np.float32)
    task = state.task
    return pa.table(
        {
            "job_id": pa.array([spec.job_id] * n, pa.string()),
            "patient_id": pa.array([task.patient_id] * n, pa.string()),
            "slide_id": pa.array([task.slide_id] * n, pa.string()),
            "x": take("x").astype(np.int64),
            "y": take("y").astype(np.int64),
            "col": cols.astype(np.int32),
            "row": rows.astype(np.int32),
            "level0_patch_size": np.full(n, level0_patch_size, np.float32),
            "tissue_fraction": take("tissue_fraction").astype(np.float32),
            "prob_idc": bundle.final_probability(prob_patch, rows, cols),
            "prob_patch": prob_patch,
            "model_version": pa.array([bundle.version] * n, pa.string()),
        }
    )
