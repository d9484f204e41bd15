"""A server worker freezes the heap it started with; tests and embedders never do unless asked."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from shop.process import GC_FREEZE_FLAG, freeze_heap_after_start


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


def test_a_server_worker_freezes_what_it_made_before_serving(
    unfrozen: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(GC_FREEZE_FLAG, "1")
    freeze_heap_after_start()
    assert gc.get_freeze_count() > 1000  # the interpreter's, the test run's and the app's objects


def test_without_the_servers_flag_nothing_is_frozen(unfrozen: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(GC_FREEZE_FLAG, raising=False)
    freeze_heap_after_start()
    assert gc.get_freeze_count() == 0
