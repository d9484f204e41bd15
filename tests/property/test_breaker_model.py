"""Model check of the circuit breaker against a reference model of Resilience4j's count-based breaker.

`ReferenceBreaker` below is a small, independent model written from the Resilience4j semantics
(and the choices `shop.bus.breaker` documents where Resilience4j leaves room):

* CLOSED: every call is permitted; outcomes go into a window of the last `sliding_window_size`
  recorded calls.  Once it holds `min(minimum_number_of_calls, sliding_window_size)` calls and the
  failure rate or the slow-call rate (percentages) reaches its threshold, the breaker opens.
* OPEN: calls are rejected (and counted as not permitted) until `wait_duration_in_open_state` has
  elapsed; the next access to the breaker (permission check, state, metrics) then makes it
  HALF_OPEN.  Outcomes that arrive while OPEN are dropped.
* HALF_OPEN: `permitted_calls_in_half_open_state` probes are permitted, further calls rejected.
  When as many probe outcomes are in, their rates decide: OPEN again (fresh wait) at or over a
  threshold, CLOSED otherwise.
* Every state change starts a fresh window and a fresh count of rejected calls.
* Exceptions in `ignore_exceptions` (and BaseExceptions such as cancellation) are neither success
  nor failure; in HALF_OPEN they hand their probe slot back.  `record_exceptions` are failures,
  any other exception a success.  A call is slow when it took at least `slow_call_duration`.
* Guarded calls (`CircuitBreaker.call`) drop their outcome when the breaker changed state while
  they ran; a fallback answers rejected calls and recorded failures, nothing else.

Where Resilience4j's code and `shop.bus.breaker` differ, the model follows the project's documented
(and conformance-tested) choice, not Resilience4j's code: a call exactly `slow_call_duration` long
is slow (Resilience4j: strictly longer); the wait is over at exactly `wait_duration_in_open_state`
(Resilience4j: strictly after); HALF_OPEN decides once all permitted probes are in (Resilience4j:
after `min(minimum_number_of_calls, permitted_calls_in_half_open_state)` of them).

`BreakerModelCheck` drives the real breaker and the model with the same random operations: calls
through the raw API (`try_acquire` + `on_success`/`on_error`) and through `call` with and without
a fallback, calls that stay in flight while others run, clock steps (onto, just before and just
past the end of the wait), `reset` and `force_open`.  After every step the states, the metrics and
the transitions seen by the listener must agree, and every permission decision must agree.

The async `call` is stepped by hand (`coroutine.send`): the called function suspends on a gate
until the test finishes it, so no event loop is needed and a step costs microseconds.

Clock values and durations are multiples of 1/8 s, so float arithmetic is exact and the
boundaries (a call exactly `slow_call_duration` long, a step onto the end of the wait) are hit
exactly.  Example counts come from the profiles in `conftest.py`: `default` for `make test`,
`deep` with SHOP_PROPERTY_PROFILE=deep.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Coroutine, Generator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from shop.bus.breaker import BreakerConfig, CircuitBreaker, CircuitOpenError

CLOSED, OPEN, HALF_OPEN = "CLOSED", "OPEN", "HALF_OPEN"
TICK = 0.125  # every clock value and duration is a multiple of this: exact float arithmetic
NAME = "model-check"

DEEP = settings.get_current_profile_name() == "deep"
MACHINE_SETTINGS = settings(
    max_examples=5000 if DEEP else 200,
    stateful_step_count=50,
    deadline=None,
)


class Boom(Exception):
    """A technical failure (in record_exceptions)."""


class BusinessRejection(Exception):
    """A business 'no': ignored when listed in ignore_exceptions."""


class Unrecorded(Exception):
    """Outside record_exceptions when that is narrowed to Boom: counts as a success."""


# What a finished call does: return (None) or raise an exception of this class.
OUTCOMES: list[type[BaseException] | None] = [
    None,
    Boom,
    BusinessRejection,
    Unrecorded,
    asyncio.CancelledError,
]


# --------------------------------------------------------------------------- reference model


@dataclass(frozen=True)
class Spec:
    """A breaker configuration, in the model's own terms."""

    window: int
    minimum: int
    failure_threshold: float
    slow_threshold: float
    slow_after: float
    wait: float
    probes: int
    ignore: tuple[type[BaseException], ...]
    record: tuple[type[BaseException], ...]

    def config(self) -> BreakerConfig:
        return BreakerConfig(
            failure_rate_threshold=self.failure_threshold,
            slow_call_rate_threshold=self.slow_threshold,
            slow_call_duration=self.slow_after,
            sliding_window_size=self.window,
            minimum_number_of_calls=self.minimum,
            wait_duration_in_open_state=self.wait,
            permitted_calls_in_half_open_state=self.probes,
            ignore_exceptions=self.ignore,
            record_exceptions=self.record,
        )


@dataclass(frozen=True)
class Snapshot:
    state: str
    failure_rate: float
    slow_call_rate: float
    buffered_calls: int
    failed_calls: int
    slow_calls: int
    not_permitted_calls: int


class ReferenceBreaker:
    """Resilience4j's count-based circuit breaker, as plainly as possible."""

    def __init__(self, spec: Spec, clock: Callable[[], float]) -> None:
        self.spec = spec
        self.clock = clock
        self.state = CLOSED
        self.period = 0  # how many times the state was (re)entered; tags guarded calls
        self.calls: deque[tuple[bool, bool]] = deque()  # (failed, slow), oldest first
        self.half_open_at = 0.0
        self.probes_out = 0
        self.rejected = 0
        self.transitions: list[tuple[str, str]] = []

    def enter(self, state: str) -> None:
        if state != self.state:
            self.transitions.append((self.state, state))
        self.state = state
        self.period += 1
        self.calls = deque()
        self.probes_out = 0
        self.rejected = 0
        if state == OPEN:
            self.half_open_at = self.clock() + self.spec.wait

    def look(self) -> str:
        """Any access to the breaker: OPEN turns HALF_OPEN once the wait is over."""
        if self.state == OPEN and self.clock() >= self.half_open_at:
            self.enter(HALF_OPEN)
        return self.state

    def permit(self) -> bool:
        state = self.look()
        if state == CLOSED:
            return True
        if state == HALF_OPEN and self.probes_out < self.spec.probes:
            self.probes_out += 1
            return True
        self.rejected += 1
        return False

    def kind(self, raised: type[BaseException] | None) -> str:
        """'success', 'failure' or 'ignored' for a call that returned (None) or raised `raised`."""
        if raised is None:
            return "success"
        if issubclass(raised, self.spec.ignore):
            return "ignored"
        if issubclass(raised, self.spec.record):
            return "failure"
        if not issubclass(raised, Exception):
            return "ignored"  # cancellation and friends say nothing about the callee
        return "success"

    def complete(self, raised: type[BaseException] | None, duration: float, period: int | None) -> None:
        """A call finished after `duration`; `period` is set for guarded calls (dropped if stale)."""
        if period is not None and period != self.period:
            return
        if self.state == OPEN:
            return
        kind = self.kind(raised)
        if kind == "ignored":
            if self.state == HALF_OPEN and self.probes_out > 0:
                self.probes_out -= 1
            return
        self.calls.append((kind == "failure", duration >= self.spec.slow_after))
        size = self.spec.probes if self.state == HALF_OPEN else self.spec.window
        if len(self.calls) > size:
            self.calls.popleft()
        if self.state == CLOSED:
            if len(self.calls) >= self.minimum() and self.over_threshold():
                self.enter(OPEN)
        elif len(self.calls) == self.spec.probes:
            self.enter(OPEN if self.over_threshold() else CLOSED)

    def minimum(self) -> int:
        if self.state == HALF_OPEN:
            return self.spec.probes
        return min(self.spec.minimum, self.spec.window)

    def counts(self) -> tuple[int, int, int]:
        return (
            len(self.calls),
            sum(1 for failed, _ in self.calls if failed),
            sum(1 for _, slow in self.calls if slow),
        )

    def over_threshold(self) -> bool:
        total, failed, slow = self.counts()
        return (
            100.0 * failed / total >= self.spec.failure_threshold
            or 100.0 * slow / total >= self.spec.slow_threshold
        )

    def snapshot(self) -> Snapshot:
        state = self.look()
        total, failed, slow = self.counts()
        if total == 0 or total < self.minimum():
            failure_rate = slow_rate = -1.0
        else:
            failure_rate, slow_rate = 100.0 * failed / total, 100.0 * slow / total
        return Snapshot(state, failure_rate, slow_rate, total, failed, slow, self.rejected)


# --------------------------------------------------------------------------- strategies

thresholds = st.one_of(
    st.integers(1, 100).map(float),
    st.sampled_from([100.0, 50.0, 12.5, 33.3, 33.4, 50.1, 66.6, 66.7, 99.9]),
    # exactly a rate a small window can show
    st.integers(1, 12).flatmap(lambda calls: st.integers(1, calls).map(lambda hits: 100 * hits / calls)),
)


@st.composite
def specs(draw: st.DrawFn) -> Spec:
    return Spec(
        window=draw(st.integers(1, 12), label="window"),
        minimum=draw(st.integers(1, 15), label="minimum"),
        failure_threshold=draw(thresholds, label="failure_threshold"),
        slow_threshold=draw(st.one_of(st.just(100.0), thresholds), label="slow_threshold"),
        slow_after=draw(st.integers(1, 32), label="slow_after_ticks") * TICK,
        wait=draw(st.one_of(st.just(0), st.integers(0, 128)), label="wait_ticks") * TICK,
        probes=draw(st.integers(1, 5), label="probes"),
        ignore=draw(st.sampled_from([(BusinessRejection,), ()]), label="ignore"),
        record=draw(st.sampled_from([(Exception,), (Boom,)]), label="record"),
    )


def durations(spec: Spec) -> st.SearchStrategy[float]:
    """How long a call takes: often right at the slow-call boundary."""
    edges = [0.0, spec.slow_after - TICK, spec.slow_after, spec.slow_after + TICK]
    return st.one_of(st.sampled_from(edges), st.integers(0, 48).map(lambda n: n * TICK))


# --------------------------------------------------------------------------- driving the async call by hand


class _Gate:
    """An awaitable that suspends its coroutine once: the call stays in flight until resumed."""

    def __await__(self) -> Generator[None, None, None]:
        yield


def _step(coro: Coroutine[Any, Any, str]) -> tuple[str, Any]:
    """Run `coro` to its next suspension: ('pending', None), ('done', value) or ('raised', exc)."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return "done", stop.value
    except BaseException as exc:
        return "raised", exc
    return "pending", None


@dataclass
class InFlight:
    """A permitted call that has not finished yet."""

    api: str  # "raw", "guarded" or "fallback"
    started: float
    period: int  # the model's period when the call was permitted
    coro: Coroutine[Any, Any, str] | None = None
    invoked: bool = False
    raise_: BaseException | None = None
    fallback_saw: list[BaseException] = field(default_factory=list)


# --------------------------------------------------------------------------- the state machine


class BreakerModelCheck(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 1000.0
        self.in_flight: list[InFlight] = []
        self.seen: list[tuple[str, str]] = []

    def clock(self) -> float:
        return self.now

    @initialize(spec=specs(), start=st.sampled_from([0.0, 1000.0, 2.0**20]))
    def build(self, spec: Spec, start: float) -> None:
        self.now = start
        self.spec = spec
        self.model = ReferenceBreaker(spec, self.clock)
        self.breaker = CircuitBreaker(
            NAME,
            spec.config(),
            clock=self.clock,
            on_state_change=lambda name, old, new: self.seen.append((old.value, new.value)),
        )

    def teardown(self) -> None:
        for old, new in sorted(set(self.model.transitions)):
            event(f"transition {old} -> {new}")
        for flight in self.in_flight:
            if flight.coro is not None:
                flight.coro.close()

    # -- calls ------------------------------------------------------------------

    def _start(self, api: str) -> InFlight | None:
        """Ask both for permission; a permitted call is returned in flight."""
        if api == "raw":
            granted = self.breaker.try_acquire()
            expected = self.model.permit()
            assert granted == expected, f"try_acquire: breaker {granted}, model {expected}"
            return InFlight(api, self.now, self.model.period) if granted else None

        expected = self.model.permit()
        flight = InFlight(api, self.now, self.model.period)

        async def work() -> str:
            flight.invoked = True
            await _Gate()
            if flight.raise_ is not None:
                raise flight.raise_
            return "fresh"

        async def fallback(exc: BaseException) -> str:
            flight.fallback_saw.append(exc)
            return "fallback"

        coro = self.breaker.call(work, fallback=fallback if api == "fallback" else None)
        status, value = _step(coro)
        assert flight.invoked == expected, f"call: breaker permitted {flight.invoked}, model {expected}"
        if expected:
            assert status == "pending"
            flight.coro = coro
            return flight
        # Rejected: CircuitOpenError, or the fallback answers with it.
        if api == "fallback":
            assert (status, value) == ("done", "fallback")
            [error] = flight.fallback_saw
        else:
            assert status == "raised"
            error = value
        assert isinstance(error, CircuitOpenError)
        assert (error.breaker, error.state.value) == (NAME, self.model.state)
        return None

    def _finish(self, flight: InFlight, raised: type[BaseException] | None, took: float) -> None:
        """`flight` runs `took` longer, then returns or raises."""
        self.now += took
        duration = self.now - flight.started
        exc = raised(f"{raised.__name__} after {duration}s") if raised is not None else None
        kind = self.model.kind(raised)
        self.model.complete(raised, duration, None if flight.api == "raw" else flight.period)

        if flight.api == "raw":
            if exc is None:
                self.breaker.on_success(duration)
            else:
                self.breaker.on_error(duration, exc)
            return

        assert flight.coro is not None
        flight.raise_ = exc
        status, value = _step(flight.coro)
        if exc is None:
            assert (status, value) == ("done", "fresh")
        elif kind == "failure" and flight.api == "fallback":
            assert (status, value) == ("done", "fallback")
            assert flight.fallback_saw == [exc]
        else:
            assert status == "raised"
            assert value is exc
            assert flight.fallback_saw == []

    @rule(
        api=st.sampled_from(["raw", "guarded", "fallback"]),
        raised=st.sampled_from(OUTCOMES),
        data=st.data(),
    )
    def call(self, api: str, raised: type[BaseException] | None, data: st.DataObject) -> None:
        """One call from permission to outcome, nothing else happening meanwhile."""
        took = data.draw(durations(self.spec), label="took")
        flight = self._start(api)
        if flight is not None:
            self._finish(flight, raised, took)

    @rule(api=st.sampled_from(["raw", "guarded", "fallback"]))
    def start_call(self, api: str) -> None:
        """Permission for a call that stays in flight."""
        flight = self._start(api)
        if flight is not None:
            self.in_flight.append(flight)

    @precondition(lambda self: len(self.in_flight) > 0)
    @rule(raised=st.sampled_from(OUTCOMES), data=st.data())
    def finish_call(self, raised: type[BaseException] | None, data: st.DataObject) -> None:
        """An in-flight call finishes (after the clock moves by `took`, with no access in between)."""
        index = data.draw(st.integers(0, len(self.in_flight) - 1), label="which")
        took = data.draw(durations(self.spec), label="took")
        self._finish(self.in_flight.pop(index), raised, took)

    # -- time and operators -------------------------------------------------------

    @rule(data=st.data())
    def advance_clock(self, data: st.DataObject) -> None:
        wait = self.spec.wait
        edges = [wait, wait + TICK, wait - TICK]
        if self.model.state == OPEN:
            left = self.model.half_open_at - self.now
            edges += [left, left - TICK, left + TICK]  # onto, just before, just past the end of the wait
        steps = [step for step in edges if step >= 0]
        self.now += data.draw(st.one_of(st.sampled_from(steps), st.integers(0, 160).map(lambda n: n * TICK)))

    @rule(operation=st.sampled_from(["reset", "force_open"]))
    def operator(self, operation: str) -> None:
        if operation == "reset":
            self.breaker.reset()
            self.model.enter(CLOSED)
        else:
            self.breaker.force_open()
            self.model.enter(OPEN)

    # -- agreement ------------------------------------------------------------------

    @invariant()
    def breaker_agrees_with_model(self) -> None:
        metrics = self.breaker.metrics()
        got = Snapshot(
            metrics.state.value,
            metrics.failure_rate,
            metrics.slow_call_rate,
            metrics.buffered_calls,
            metrics.failed_calls,
            metrics.slow_calls,
            metrics.not_permitted_calls,
        )
        assert got == self.model.snapshot()
        assert self.breaker.state.value == self.model.state
        assert self.seen == self.model.transitions


BreakerModelCheck.TestCase.settings = MACHINE_SETTINGS
# The deep profile runs for minutes: lift the suite's per-test timeout for it.
TestBreakerModel = pytest.mark.timeout(0)(BreakerModelCheck.TestCase) if DEEP else BreakerModelCheck.TestCase
