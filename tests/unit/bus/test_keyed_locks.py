"""A lock per key: one holder a key at a time, in arrival order; nothing kept once a key's
holders and waiters are gone, also when a holder fails."""

from __future__ import annotations

import asyncio

import pytest

from shop.bus.keyed_locks import KeyedLocks


async def test_holders_of_one_key_take_turns_in_arrival_order_and_other_keys_do_not_wait() -> None:
    locks: KeyedLocks[str] = KeyedLocks()
    order: list[str] = []
    release = asyncio.Event()

    async def hold(key: str, name: str) -> None:
        async with locks.hold(key):
            order.append(name)
            if name == "a1":
                await release.wait()

    first = asyncio.create_task(hold("a", "a1"))
    await asyncio.sleep(0)
    waiting = [asyncio.create_task(hold("a", f"a{n}")) for n in (2, 3)]
    await asyncio.sleep(0)
    await hold("b", "b1")  # another key: not behind a1
    assert order == ["a1", "b1"]
    assert locks.locked("a")
    assert not locks.locked("b")
    assert locks.keys() == ["a"]
    release.set()
    await asyncio.gather(first, *waiting)
    assert order == ["a1", "b1", "a2", "a3"]
    assert len(locks) == 0


async def test_a_failing_holder_releases_its_key_and_nothing_is_kept() -> None:
    locks: KeyedLocks[int] = KeyedLocks()
    with pytest.raises(RuntimeError):
        async with locks.hold(7):
            raise RuntimeError("boom")
    assert len(locks) == 0
    async with locks.hold(7):  # free again
        assert locks.locked(7)
    assert not locks.locked(7)
