"""freeze_startup_heap: what exists at the call is frozen (never scanned again), later objects are not."""

import gc

from fleetserve.engine.runtime.heap_freeze import GEN2_THRESHOLD_ENV, apply_gc_thresholds, freeze_startup_heap


def test_freeze_startup_heap_freezes_existing_objects_only():
    startup = [[i] for i in range(1000)]
    try:
        frozen = freeze_startup_heap()
        # Other threads of the test process (Ray, HTTP clients) may free a few frozen objects
        # meanwhile, so the count can only fall (a clean clone's full run saw 968205 -> 968203).
        assert frozen >= 1000 and gc.get_freeze_count() <= frozen
        before_later = gc.get_freeze_count()
        later = [[i] for i in range(1000)]
        assert gc.get_freeze_count() <= before_later  # new objects stay collectable: none frozen
        assert all(gc.is_tracked(x) for x in later)
        # A cycle made after the freeze is still collected.
        cycle = []
        cycle.append(cycle)
        del cycle
        assert gc.collect() >= 1
    finally:
        gc.unfreeze()
    del startup


def test_gen2_threshold_from_the_environment_only():
    before = gc.get_threshold()
    try:
        assert apply_gc_thresholds({}) == before  # unset: Python's own thresholds stay
        assert apply_gc_thresholds({GEN2_THRESHOLD_ENV: "1000"}) == (before[0], before[1], 1000)
    finally:
        gc.set_threshold(*before)
