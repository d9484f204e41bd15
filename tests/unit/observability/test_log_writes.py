"""How log lines reach stderr: the lines of one event-loop turn in one write at its end, a line
off any loop at once, nothing lost or reordered."""

from __future__ import annotations

import asyncio
import io
import sys
import threading

import pytest

from shop.observability.logging import _Stderr


class CountingStderr(io.StringIO):
    """A stderr that counts its writes."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def swap_stderr(monkeypatch: pytest.MonkeyPatch) -> CountingStderr:
    """sys.stderr swapped in the test's body (pytest's capture swaps it between phases)."""
    fake = CountingStderr()
    monkeypatch.setattr(sys, "stderr", fake)
    return fake


async def test_the_lines_of_one_loop_turn_go_out_in_one_write_at_its_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stderr = swap_stderr(monkeypatch)
    out = _Stderr()
    for n in range(50):
        out.write(f"line {n}\n")
        out.flush()  # a logger's flush after each line: the turn's end writes instead
    assert stderr.getvalue() == ""

    await asyncio.sleep(0)  # the turn ends

    assert stderr.writes == 1
    assert stderr.getvalue() == "".join(f"line {n}\n" for n in range(50))


async def test_each_turn_writes_its_own_lines_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    stderr = swap_stderr(monkeypatch)
    out = _Stderr()
    out.write("first\n")
    await asyncio.sleep(0)
    out.write("second\n")
    out.write("third\n")
    await asyncio.sleep(0)

    assert stderr.getvalue() == "first\nsecond\nthird\n"
    assert stderr.writes == 2


def test_off_a_loop_a_line_goes_out_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    stderr = swap_stderr(monkeypatch)
    out = _Stderr()
    out.write("at once\n")
    assert stderr.getvalue() == "at once\n"


async def test_a_line_from_another_thread_goes_out_at_once_after_what_is_pending(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stderr = swap_stderr(monkeypatch)
    out = _Stderr()
    out.write("from the loop\n")
    thread = threading.Thread(target=out.write, args=("from a thread\n",))
    thread.start()
    thread.join()

    assert stderr.getvalue() == "from the loop\nfrom a thread\n"
    await asyncio.sleep(0)
    assert stderr.getvalue() == "from the loop\nfrom a thread\n"  # nothing twice


def test_a_loop_that_stops_before_its_turn_ends_loses_nothing_at_drain(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stderr = swap_stderr(monkeypatch)
    out = _Stderr()
    loop = asyncio.new_event_loop()

    async def log_and_leave() -> None:
        out.write("last words\n")

    loop.run_until_complete(log_and_leave())
    loop.close()  # the scheduled write may never have run: drain (registered at exit) writes it
    out.drain()
    assert stderr.getvalue() == "last words\n"


def test_a_loop_closed_before_its_turn_ended_leaves_its_lines_to_the_next_loops_turn(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stderr = swap_stderr(monkeypatch)
    out = _Stderr()

    async def log(text: str) -> None:
        out.write(text)

    first = asyncio.new_event_loop()
    task = first.create_task(log("from the first loop\n"))
    first.call_soon(first.stop)  # stops after the turn in which the line is written
    first.run_forever()
    first.close()  # the write it scheduled for after that turn never ran
    assert task.done()
    assert stderr.getvalue() == ""
    second = asyncio.new_event_loop()
    second.run_until_complete(log("from the second loop\n"))
    second.run_until_complete(asyncio.sleep(0))
    second.close()

    assert stderr.getvalue() == "from the first loop\nfrom the second loop\n"
