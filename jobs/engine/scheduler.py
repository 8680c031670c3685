"""The scheduling policy of a scoring run, without Ray: which call each scorer actor gets next, and
where every slide stands.

An actor gets the chunks of the slides it planned (it keeps the slide open, so tiles two chunks
share are decoded once); when it has none, it plans a new slide while fewer than
``max_slides_in_flight`` are being planned; else it helps with another actor's slide, taking chunks
from its end, away from those its owner reads next. Each actor has at most ``calls_per_actor``
calls queued: a call queued behind one that crashes its actor would share its retries.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from idcmap.jobs.inputs import SlideTask
from idcmap.slide_tiling import SlidePlan

CHUNK_PATCHES = 1024  # grid patches per scoring call (before the tissue filter)
CALLS_PER_ACTOR = 1  # two per actor measured slower (benchmarks/README.md)
ORPHAN = -2  # the actor of a slide whose actor was lost: the next free actor adopts it


@dataclass(frozen=True)
class SlideFacts:
    """What planning learns about a slide, stored with its predictions."""

    width0: int
    height0: int
    mpp: tuple[float, float]  # level-0 µm/px
    thumbnail_downsample: float  # level-0 px per thumbnail px
    thumbnail_jpeg: str  # base64; "" when it could not be encoded


@dataclass(frozen=True)
class ScoredChunk:
    """A chunk's tissue patches and their probabilities (no pixels)."""

    cols: np.ndarray
    rows: np.ndarray
    x: np.ndarray
    y: np.ndarray
    tissue_fraction: np.ndarray
    prob_patch: np.ndarray


@dataclass
class SlideState:
    task: SlideTask
    plan: SlidePlan | None = None
    facts: SlideFacts | None = None
    chunks_total: int = 0
    started: float = field(default_factory=time.time)
    actor: int = -1  # the actor that planned it (and keeps it open)
    parts: list[ScoredChunk] = field(default_factory=list)
    chunks_done: int = 0
    failed: str = ""


@dataclass(frozen=True)
class PlanCall:
    """Plan ``task`` on ``actor``."""

    actor: int
    task: SlideTask


@dataclass(frozen=True)
class ScoreCall:
    """Cut and score ``regions`` of ``slide`` on ``actor``."""

    actor: int
    task: SlideTask
    slide: SlideState
    regions: tuple

    def region_plan(self) -> SlidePlan:
        """The slide's plan, slimmed to this call's regions: what the actor needs."""
        assert self.slide.plan is not None, "a slide gets score calls only once it is planned"
        return self.slide.plan.slim(list(self.regions))


Call = PlanCall | ScoreCall


def chunks(plan: SlidePlan, chunk_patches: int) -> list[list]:
    """Group the plan's regions into chunks of about ``chunk_patches`` grid patches."""
    out, current, size = [], [], 0
    for region in plan.regions:
        c0, r0, c1, r1 = region
        current.append(region)
        size += (c1 - c0) * (r1 - r0)
        if size >= chunk_patches:
            out.append(current)
            current, size = [], 0
    if current:
        out.append(current)
    return out


class Scheduler:
    """Queues of slides to plan and chunks to score; the driver asks :meth:`next_call` until it
    is None, reports each call's outcome (:meth:`planned`, :meth:`scored`, :meth:`failed`), and
    writes the slides :meth:`take_completed` hands it."""

    chunk_patches = CHUNK_PATCHES
    calls_per_actor = CALLS_PER_ACTOR

    def __init__(
        self, tasks: list[SlideTask], n_actors: int, max_slides_in_flight: int, min_tissue: float, target_mpp: float
    ):
        self.todo = deque(tasks)
        self.busy = [0] * n_actors  # calls queued or running on each actor
        self.available = [True] * n_actors  # an actor gets calls only while it is available
        self.losses: dict[str, int] = {}  # slide -> calls lost with their actor
        self.max_slides_in_flight = max_slides_in_flight
        self.min_tissue, self.target_mpp = min_tissue, target_mpp
        self.planning = 0  # plan calls out
        self.scoring = 0  # score calls out
        self.ready: list[tuple[SlideState, list]] = []  # chunks to score, each slide's in raster order
        self.completed: list[SlideState] = []  # slides to write (or record as failed)

    @property
    def finished(self) -> bool:
        return not (self.todo or self.planning or self.scoring or self.ready or self.completed)

    @property
    def waiting(self) -> bool:
        """Whether calls are out."""
        return bool(self.planning or self.scoring)

    def next_call(self) -> Call | None:
        """The least busy actor's next call, or None when no actor is free or nothing is left to give."""
        while True:
            free = [i for i in range(len(self.busy)) if self.available[i]]
            if not free:
                return None
            i = min(free, key=self.busy.__getitem__)
            if self.busy[i] >= self.calls_per_actor:
                return None
            # its own slides' chunks first, and chunks whose actor was lost (it adopts their slide)
            own = next((k for k, (state, _) in enumerate(self.ready) if state.actor in (i, ORPHAN)), None)
            if own is None and self.todo and self.planning < self.max_slides_in_flight:
                call: Call = PlanCall(i, self.todo.popleft())
                self.planning += 1
            elif self.ready:
                state, regions = self.ready.pop(len(self.ready) - 1 if own is None else own)
                if state.failed:  # an earlier chunk failed the slide: no need to score the rest
                    self._chunk_done(state)
                    continue
                call = ScoreCall(i, state.task, state, tuple(regions))
                state.actor = i if state.actor == ORPHAN else state.actor
                self.scoring += 1
            else:
                return None
            self.busy[i] += 1
            return call

    def planned(self, call: PlanCall, plan: SlidePlan, facts: SlideFacts) -> SlideState:
        """A plan call returned: the slide's chunks join the queue."""
        self._returned(call)
        parts = chunks(plan, self.chunk_patches)
        state = SlideState(call.task, plan, facts, len(parts), actor=call.actor)
        if not parts:
            state.failed = f"{call.task.source}: no tissue found at {self.target_mpp:g} µm/px"
            self.completed.append(state)
        self.ready.extend((state, c) for c in parts)
        return state

    def scored(self, call: ScoreCall, part: ScoredChunk | None) -> None:
        """A score call returned its chunk (None: no tissue patch in it)."""
        self._returned(call)
        if part is not None and not call.slide.failed:
            call.slide.parts.append(part)
        self._chunk_done(call.slide)

    def failed(self, call: Call, reason: str) -> None:
        """A call failed for good (its retries spent): its slide fails with ``reason``."""
        self._returned(call)
        if isinstance(call, PlanCall):
            self.completed.append(SlideState(call.task, failed=reason))
            return
        if not call.slide.failed:
            call.slide.failed = reason
        self._chunk_done(call.slide)

    def lost(self, call: Call, reason: str, limit: int) -> bool:
        """A call's actor died under it (its process or its node): the call is queued again, unless
        its slide has now lost ``limit`` calls; then the slide fails with ``reason``. Whether it
        was queued again."""
        key = call.task.key
        self.losses[key] = self.losses.get(key, 0) + 1
        if self.losses[key] >= limit:
            self.failed(call, reason)
            return False
        self.requeue(call)
        return True

    def requeue(self, call: Call) -> None:
        """A call lost with its node (not the slide's fault): its work goes back to the queues."""
        self._returned(call)
        if isinstance(call, PlanCall):
            self.todo.appendleft(call.task)
        else:
            call.slide.actor = ORPHAN
            self.ready.insert(0, (call.slide, list(call.regions)))

    def add_actor(self) -> int:
        """A new actor's index; it gets calls once :meth:`set_available` says it is ready."""
        self.busy.append(0)
        self.available.append(False)
        return len(self.busy) - 1

    def set_available(self, actor: int, available: bool) -> None:
        self.available[actor] = available

    def fail_remaining(self, reason: str) -> None:
        """No actor is left to run the rest: every slide not completed fails with ``reason``."""
        while self.todo:
            self.completed.append(SlideState(self.todo.popleft(), failed=reason))
        for state, _ in self.ready:
            if not state.failed:
                state.failed = reason
        while self.ready:
            self._chunk_done(self.ready.pop()[0])

    def take_completed(self) -> list[SlideState]:
        done, self.completed = self.completed, []
        return done

    def _returned(self, call: Call) -> None:
        self.busy[call.actor] -= 1
        if isinstance(call, PlanCall):
            self.planning -= 1
        else:
            self.scoring -= 1

    def _chunk_done(self, state: SlideState) -> None:
        state.chunks_done += 1
        if state.chunks_done == state.chunks_total:
            if not state.failed and not state.parts:
                state.failed = f"{state.task.source}: no tissue found: no patch reaches {self.min_tissue:.0%} tissue"
            self.completed.append(state)
