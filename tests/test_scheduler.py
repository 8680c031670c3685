"""The scoring run's scheduling policy, without Ray: calls, queues, failures, completion."""

from __future__ import annotations

import random
from types import SimpleNamespace

import numpy as np

from idcmap.jobs.engine.scheduler import PlanCall, Scheduler, ScoredChunk, SlideFacts, chunks
from idcmap.jobs.inputs import SlideTask

FACTS = SlideFacts(100, 100, (1.0, 1.0), 8.0, "")


def task(name: str) -> SlideTask:
    return SlideTask(patient_id="P", slide_id=name, source=f"/slides/{name}.tiff")


def plan(n_regions: int, size: int = 32):
    """A plan whose regions are ``n_regions`` strips of ``size`` x 1 patches."""
    return SimpleNamespace(regions=[(0, r, size, r + 1) for r in range(n_regions)])


def part(n: int = 3) -> ScoredChunk:
    a = np.arange(n)
    return ScoredChunk(a, a, a, a, np.ones(n), np.full(n, 0.5, np.float32))


def test_chunks_group_regions_to_about_the_chunk_size():
    p = plan(5, size=40)  # 40 patches a region
    assert [len(c) for c in chunks(p, 100)] == [3, 2]  # 120 >= 100, then the rest
    assert chunks(plan(0), 100) == []


def test_plans_are_bounded_and_an_actor_gets_the_chunks_of_the_slide_it_planned():
    s = Scheduler(
        [task("A"), task("B"), task("C")], n_actors=2, max_slides_in_flight=2, min_tissue=0.05, target_mpp=4.0
    )
    s.chunk_patches = 32  # one region a chunk
    a, b = s.next_call(), s.next_call()
    assert (isinstance(a, PlanCall), a.actor, a.task.slide_id) == (True, 0, "A")
    assert (isinstance(b, PlanCall), b.actor, b.task.slide_id) == (True, 1, "B")
    assert s.next_call() is None  # one call per actor
    s.planned(a, plan(3), FACTS)
    first = s.next_call()
    assert not isinstance(first, PlanCall)
    assert (first.actor, first.slide.task.slide_id, first.regions) == (0, "A", ((0, 0, 32, 1),))
    s.scored(first, part())
    assert s.next_call().regions == ((0, 1, 32, 2),)  # the next of its own slide, in raster order
    s.planned(b, plan(0), FACTS)  # no tissue: B is complete and failed; actor 1 is free
    (done,) = s.take_completed()
    assert done.task.slide_id == "B" and done.failed == "/slides/B.tiff: no tissue found at 4 µm/px"
    helper = s.next_call()  # plans C (a slide to plan comes before helping)
    assert isinstance(helper, PlanCall) and helper.task.slide_id == "C"


def test_an_actor_with_nothing_to_plan_helps_from_the_end_of_another_slide():
    s = Scheduler([task("A")], n_actors=2, max_slides_in_flight=2, min_tissue=0.05, target_mpp=4.0)
    s.chunk_patches = 32
    a = s.next_call()
    assert s.next_call() is None  # actor 1: nothing to plan, nothing to score yet
    s.planned(a, plan(4), FACTS)
    own, helper = s.next_call(), s.next_call()
    assert (own.actor, own.regions[0][1]) == (0, 0)
    assert (helper.actor, helper.regions[0][1]) == (1, 3)


def test_a_failed_chunk_fails_its_slide_once_and_skips_its_other_chunks():
    s = Scheduler([task("A"), task("B")], n_actors=1, max_slides_in_flight=1, min_tissue=0.05, target_mpp=4.0)
    s.chunk_patches = 32
    a = s.next_call()
    s.planned(a, plan(3), FACTS)
    c1 = s.next_call()
    s.failed(c1, "/slides/A.tiff: TIFFReadTile failed")
    b = s.next_call()  # A's two other chunks are dropped without a call; B is planned
    assert isinstance(b, PlanCall) and b.task.slide_id == "B"
    (done,) = s.take_completed()
    assert done.failed == "/slides/A.tiff: TIFFReadTile failed" and done.chunks_done == 3 and not done.parts


def test_a_failed_plan_and_a_slide_without_tissue_patches_are_completed_as_failed():
    s = Scheduler([task("A"), task("B")], n_actors=2, max_slides_in_flight=2, min_tissue=0.05, target_mpp=4.0)
    a, b = s.next_call(), s.next_call()
    s.failed(a, "/slides/A.tiff: not a TIFF file")
    s.planned(b, plan(1), FACTS)
    s.scored(s.next_call(), None)
    failed = {st.task.slide_id: st.failed for st in s.take_completed()}
    assert failed == {
        "A": "/slides/A.tiff: not a TIFF file",
        "B": "/slides/B.tiff: no tissue found: no patch reaches 5% tissue",
    }
    assert s.finished


def test_random_completion_orders_score_every_chunk_once_and_complete_every_slide_once():
    rng = random.Random(7)
    for trial in range(50):
        n_slides, n_actors = rng.randint(1, 6), rng.randint(1, 4)
        regions = {f"S{i}": rng.randint(0, 5) for i in range(n_slides)}
        s = Scheduler([task(n) for n in regions], n_actors, rng.randint(1, 3), 0.05, 4.0)
        s.chunk_patches = 32
        out, scored, completed = [], [], []
        while not s.finished:
            while (call := s.next_call()) is not None:
                out.append(call)
            assert all(b <= s.calls_per_actor for b in s.busy)
            completed += s.take_completed()
            if not out:
                continue
            call = out.pop(rng.randrange(len(out)))
            if rng.random() < 0.1:
                s.failed(call, f"{call.task.source}: boom")
            elif isinstance(call, PlanCall):
                s.planned(call, plan(regions[call.task.slide_id]), FACTS)
            else:
                scored.append((call.task.slide_id, call.regions))
                s.scored(call, part())
        names = sorted(st.task.slide_id for st in completed)
        assert names == sorted(regions), trial
        assert len(scored) == len(set(scored))
        for st in completed:
            assert st.failed or len(st.parts) == st.chunks_total == regions[st.task.slide_id]


def test_a_lost_call_goes_to_another_actor_until_its_slide_has_lost_four():
    s = Scheduler([task("A"), task("B")], n_actors=2, max_slides_in_flight=1, min_tissue=0.05, target_mpp=4.0)
    s.chunk_patches = 32
    s.planned(s.next_call(), plan(2), FACTS)  # A planned by actor 0
    first = s.next_call()  # actor 0: A's first chunk
    assert s.lost(first, "A: lost", limit=4) is True  # its actor died: the chunk is queued again
    s.set_available(0, False)  # that actor is retired
    again = s.next_call()  # actor 1 adopts A before planning B
    assert not isinstance(again, PlanCall) and again.actor == 1 and again.regions == first.regions
    for _ in range(2):
        assert s.lost(again, "A: lost", limit=4) is True
        again = s.next_call()
        assert again.regions == first.regions
    assert s.lost(again, "A: lost", limit=4) is False  # the fourth: A fails, alone
    assert isinstance(s.next_call(), PlanCall)  # B goes on
    (done,) = s.take_completed()
    assert done.task.slide_id == "A" and done.failed == "A: lost"


def test_fail_remaining_ends_every_slide_not_completed():
    s = Scheduler([task("A"), task("B"), task("C")], n_actors=1, max_slides_in_flight=1, min_tissue=0.05,
                  target_mpp=4.0)  # fmt: skip
    s.chunk_patches = 32
    s.planned(s.next_call(), plan(3), FACTS)
    s.scored(s.next_call(), part())
    s.fail_remaining("no node left")
    done = {st.task.slide_id: st.failed for st in s.take_completed()}
    assert done == {"A": "no node left", "B": "no node left", "C": "no node left"} and s.finished
