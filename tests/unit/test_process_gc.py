"""A server worker freezes the heap it started with; tests and embedders never do unless asked."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from shop.process import GC_FREEZE_FLAG, GC_GEN0_THRESHOLD, freeze_heap_after_start


@pytest.fixture
def unfrozen() -> Iterator[None]:
    thresholds = gc.get_threshold()
    gc.unfreeze()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_a_server_worker_freezes_what_it_made_before_serving(
    unfrozen: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(GC_FREEZE_FLAG, "1")
    freeze_heap_after_start()
    assert gc.get_freeze_count() > 1000  # the interpreter's, the test run's and the app's objects


def test_a_server_worker_collects_its_youngest_objects_less_often(
    unfrozen: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    older = gc.get_threshold()[1:]
    monkeypatch.setenv(GC_FREEZE_FLAG, "1")
    freeze_heap_after_start()
    assert gc.get_threshold() == (GC_GEN0_THRESHOLD, *older)
    assert GC_GEN0_THRESHOLD > 700  # CPython's default


def test_without_the_servers_flag_nothing_is_frozen(unfrozen: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(GC_FREEZE_FLAG, raising=False)
    before = gc.get_threshold()
    freeze_heap_after_start()
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == before
