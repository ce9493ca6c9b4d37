"""Long walks collect garbage rarely, and leave the collector as they found it."""

from __future__ import annotations

import gc

import pytest

from cipherdump.engine.gctune import few_collections


def test_few_collections_raises_the_threshold_and_restores_it() -> None:
    before = gc.get_threshold()
    with few_collections():
        assert gc.get_threshold()[0] >= 10_000
        assert gc.get_threshold()[1:] == before[1:]
        assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_few_collections_restores_after_an_error() -> None:
    before = gc.get_threshold()
    with pytest.raises(RuntimeError), few_collections():
        raise RuntimeError("boom")
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_few_collections_still_frees_cycles_made_inside() -> None:
    class Cycle:
        other: object

    with few_collections():
        a, b = Cycle(), Cycle()
        a.other, b.other = b, a
        count = sum(isinstance(o, Cycle) for o in gc.get_objects())
        del a, b
    gc.collect()
    assert sum(isinstance(o, Cycle) for o in gc.get_objects()) == count - 2
