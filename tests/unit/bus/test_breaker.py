"""Conformance table for the circuit breaker (Resilience4j semantics), driven by a fake clock."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import pytest

from shop.bus.breaker import (
    BreakerConfig,
    BreakerRegistry,
    CircuitBreaker,
    CircuitOpenError,
    CircuitState,
)

CLOSED, OPEN, HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN

SLOW = 1.0  # slow_call_duration used throughout
WAIT = 10.0  # wait_duration_in_open_state used throughout


class FakeClock:
    """A monotonic clock the test advances by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Boom(Exception):
    """A technical failure: recorded by default."""


class BusinessRejection(Exception):
    """A business 'no' (e.g. out of stock): must never count for or against the callee."""


class Unrecorded(Exception):
    """Not in record_exceptions when a row narrows it to Boom: counts as success."""


def make_config(**overrides: Any) -> BreakerConfig:
    values: dict[str, Any] = {
        "failure_rate_threshold": 50.0,
        "slow_call_rate_threshold": 100.0,
        "slow_call_duration": SLOW,
        "sliding_window_size": 10,
        "minimum_number_of_calls": 5,
        "wait_duration_in_open_state": WAIT,
        "permitted_calls_in_half_open_state": 3,
        "ignore_exceptions": (BusinessRejection,),
    }
    values.update(overrides)
    return BreakerConfig(**values)


def make_breaker(clock: FakeClock, **overrides: Any) -> CircuitBreaker:
    return CircuitBreaker("payments", make_config(**overrides), clock=clock)


# Script letters: S fast success, F fast failure, W slow success, X slow failure,
# I business rejection (ignored), U exception outside record_exceptions.
# Slow calls take exactly slow_call_duration, which proves the ">=" boundary.
_DURATION = {"S": 0.0, "F": 0.0, "W": SLOW, "X": SLOW, "I": SLOW, "U": 0.0}
_RAISES: dict[str, type[Exception]] = {"F": Boom, "X": Boom, "I": BusinessRejection, "U": Unrecorded}


async def play(breaker: CircuitBreaker, clock: FakeClock, script: str) -> None:
    """Run one guarded call per letter; the called function advances the fake clock."""
    for letter in script:

        async def op(letter: str = letter) -> str:
            clock.advance(_DURATION[letter])
            if letter in _RAISES:
                raise _RAISES[letter](letter)
            return "ok"

        with contextlib.suppress(Boom, BusinessRejection, Unrecorded, CircuitOpenError):
            await breaker.call(op)


async def trip(breaker: CircuitBreaker, clock: FakeClock) -> None:
    """Fail calls until the breaker opens (no rejected calls along the way)."""
    for _ in range(breaker.config.sliding_window_size):
        await play(breaker, clock, "F")
        if breaker.state is OPEN:
            return
    raise AssertionError("breaker did not open")


# --------------------------------------------------------------------------- CLOSED-state conformance table

CLOSED_TABLE = [
    # id, config overrides, script, expected state, expected buffered calls, expected failed calls
    pytest.param({}, "FFFF", CLOSED, 4, 4, id="below-minimum-calls-stays-closed-at-100pct-failures"),
    pytest.param({}, "FFFFF", OPEN, 0, 0, id="minimum-reached-at-100pct-failures-opens"),
    pytest.param(
        {"minimum_number_of_calls": 10}, "SSSSSFFFFF", OPEN, 0, 0, id="exactly-at-failure-threshold-opens"
    ),
    pytest.param(
        {"minimum_number_of_calls": 10},
        "SSSSSSFFFF",
        CLOSED,
        10,
        4,
        id="below-failure-threshold-stays-closed",
    ),
    pytest.param(
        {"minimum_number_of_calls": 10, "failure_rate_threshold": 50.1},
        "SSSSSFFFFF",
        CLOSED,
        10,
        5,
        id="just-below-failure-threshold-stays-closed",
    ),
    pytest.param(
        {"minimum_number_of_calls": 20}, "SSSSSFFFFF", OPEN, 0, 0, id="minimum-capped-at-window-size"
    ),
    pytest.param(
        {"sliding_window_size": 4, "minimum_number_of_calls": 4, "failure_rate_threshold": 40.0},
        "FSSSF",
        CLOSED,
        4,
        1,
        id="window-counts-only-last-n-calls-old-failure-falls-out",
    ),
    pytest.param(
        {"sliding_window_size": 5, "minimum_number_of_calls": 4, "failure_rate_threshold": 40.0},
        "FSSSF",
        OPEN,
        0,
        0,
        id="same-calls-in-a-larger-window-open",
    ),
    pytest.param({}, "SSSSSSSSSSSSSSS", CLOSED, 10, 0, id="window-never-holds-more-than-n-calls"),
    pytest.param({}, "WWWWW", OPEN, 0, 0, id="all-slow-calls-open-at-default-100pct-slow-threshold"),
    pytest.param({}, "WWWWS", CLOSED, 5, 0, id="one-fast-call-keeps-slow-rate-below-100pct"),
    pytest.param(
        {"slow_call_rate_threshold": 50.0, "minimum_number_of_calls": 4},
        "SSWW",
        OPEN,
        0,
        0,
        id="slow-call-rate-at-threshold-opens",
    ),
    pytest.param(
        {"slow_call_rate_threshold": 50.0, "minimum_number_of_calls": 4},
        "SSSW",
        CLOSED,
        4,
        0,
        id="slow-call-rate-below-threshold-stays-closed",
    ),
    pytest.param(
        {"failure_rate_threshold": 100.0, "slow_call_rate_threshold": 60.0},
        "XXXSS",
        OPEN,
        0,
        0,
        id="slow-failures-count-as-slow-calls",
    ),
    pytest.param({}, "IIIIIIIIII", CLOSED, 0, 0, id="business-rejections-are-not-recorded"),
    pytest.param({}, "FFFFIIII", CLOSED, 4, 4, id="business-rejections-do-not-reach-the-minimum"),
    pytest.param(
        {"record_exceptions": (Boom,)},
        "UUUUU",
        CLOSED,
        5,
        0,
        id="exceptions-outside-record-exceptions-count-as-success",
    ),
]


@pytest.mark.parametrize(("overrides", "script", "state", "buffered", "failed"), CLOSED_TABLE)
async def test_closed_state_conformance(
    overrides: dict[str, Any], script: str, state: CircuitState, buffered: int, failed: int
) -> None:
    clock = FakeClock()
    breaker = make_breaker(clock, **overrides)

    await play(breaker, clock, script)

    metrics = breaker.metrics()
    assert (metrics.state, metrics.buffered_calls, metrics.failed_calls) == (state, buffered, failed)


async def test_failure_rate_is_minus_one_below_minimum_calls() -> None:
    clock = FakeClock()
    breaker = make_breaker(clock, failure_rate_threshold=90.0)
    await play(breaker, clock, "FFFF")
    assert breaker.metrics().failure_rate == -1.0
    assert breaker.metrics().slow_call_rate == -1.0
    await play(breaker, clock, "S")
    assert breaker.metrics().failure_rate == 80.0
    assert breaker.metrics().slow_call_rate == 0.0


# --------------------------------------------------------------------------- OPEN


async def test_open_rejects_without_invoking_the_function() -> None:
    clock = FakeClock()
    breaker = make_breaker(clock)
    await trip(breaker, clock)
    invoked = False

    async def op() -> str:
        nonlocal invoked
        invoked = True
        return "ok"

    for expected_rejections in (1, 2):
        with pytest.raises(CircuitOpenError) as info:
            await breaker.call(op)
        assert info.value.breaker == "payments"
        assert breaker.metrics().not_permitted_calls == expected_rejections
    assert not invoked
    assert "payments" in str(info.value)
    assert "OPEN" in str(info.value)


async def test_open_stays_open_until_the_wait_has_elapsed() -> None:
    clock = FakeClock()
    breaker = make_breaker(clock)
    await trip(breaker, clock)

    clock.advance(WAIT - 0.001)
    assert breaker.state is OPEN
    assert not breaker.try_acquire()

    clock.advance(0.001)
    assert breaker.state is HALF_OPEN


async def test_outcomes_recorded_while_open_are_discarded() -> None:
    clock = FakeClock()
    breaker = make_breaker(clock)
    await trip(breaker, clock)
    breaker.on_error(0.0, Boom())
    breaker.on_success(0.0)
    assert breaker.metrics().buffered_calls == 0
    assert breaker.state is OPEN


async def test_call_in_flight_when_the_breaker_opens_is_not_recorded() -> None:
    clock = FakeClock()
    breaker = make_breaker(clock)

    async def op() -> str:
        breaker.force_open()
        clock.advance(WAIT)
        return "late"

    assert await breaker.call(op) == "late"
    assert breaker.state is HALF_OPEN
    assert breaker.metrics().buffered_calls == 0


# --------------------------------------------------------------------------- HALF_OPEN


async def test_after_the_wait_exactly_the_permitted_probes_pass_and_the_next_is_rejected() -> None:
    clock = FakeClock()
    breaker = make_breaker(clock, permitted_calls_in_half_open_state=3)
    await trip(breaker, clock)
    clock.advance(WAIT)
    release = asyncio.Event()
    started = 0

    async def probe() -> str:
        nonlocal started
        started += 1
        await release.wait()
        return "ok"

    probes = [asyncio.create_task(breaker.call(probe)) for _ in range(3)]
    await asyncio.sleep(0)  # let the probes start and stay outstanding
    assert breaker.state is HALF_OPEN
    assert started == 3

    with pytest.raises(CircuitOpenError) as info:
        await breaker.call(probe)
    assert info.value.state is HALF_OPEN
    assert started == 3
    assert breaker.metrics().not_permitted_calls == 1

    release.set()
    assert await asyncio.gather(*probes) == ["ok", "ok", "ok"]
    assert breaker.state is CLOSED


async def test_try_acquire_grants_exactly_the_permitted_probes() -> None:
    clock = FakeClock()
    breaker = make_breaker(clock, permitted_calls_in_half_open_state=2)
    await trip(breaker, clock)
    clock.advance(WAIT)
    assert [breaker.try_acquire() for _ in range(3)] == [True, True, False]


PROBE_TABLE = [
    # id, probe script, expected state once all probes are in
    pytest.param("SSS", CLOSED, id="all-probes-succeed-closes"),
    pytest.param("SSF", CLOSED, id="probe-failure-rate-below-threshold-closes"),
    pytest.param("SFF", OPEN, id="probe-failure-rate-over-threshold-reopens"),
    pytest.param("FFF", OPEN, id="all-probes-fail-reopens"),
    pytest.param("WWW", OPEN, id="all-probes-slow-reopens"),
    pytest.param("SIISS", CLOSED, id="business-rejections-do-not-use-up-probes"),
]


@pytest.mark.parametrize(("probes", "expected"), PROBE_TABLE)
async def test_probes_decide_the_next_state(probes: str, expected: CircuitState) -> None:
    clock = FakeClock()
    breaker = make_breaker(clock)
    await trip(breaker, clock)
    clock.advance(WAIT)

    await play(breaker, clock, probes[:-1])
    assert breaker.state is HALF_OPEN  # no decision before the last probe outcome
    await play(breaker, clock, probes[-1])

    assert breaker.state is expected


async def test_reopening_from_half_open_starts_a_fresh_wait() -> None:
    clock = FakeClock()
    breaker = make_breaker(clock)
    await trip(breaker, clock)
    clock.advance(WAIT + 100.0)
    await play(breaker, clock, "FFF")
    assert breaker.state is OPEN

    clock.advance(WAIT - 0.001)
    assert breaker.state is OPEN
    clock.advance(0.001)
    assert breaker.state is HALF_OPEN


async def test_closing_from_half_open_starts_a_fresh_window() -> None:
    clock = FakeClock()
    breaker = make_breaker(clock)
    await trip(breaker, clock)
    clock.advance(WAIT)
    await play(breaker, clock, "SSF")
    assert breaker.state is CLOSED
    metrics = breaker.metrics()
    assert (metrics.buffered_calls, metrics.failed_calls, metrics.failure_rate) == (0, 0, -1.0)


# --------------------------------------------------------------------------- exceptions and fallback


async def test_business_rejection_propagates_and_never_reaches_the_fallback() -> None:
    clock = FakeClock()
    breaker = make_breaker(clock)
    fallback_calls: list[BaseException] = []

    async def fallback(exc: BaseException) -> str:
        fallback_calls.append(exc)
        return "fallback"

    async def op() -> str:
        raise BusinessRejection("out of stock")

    with pytest.raises(BusinessRejection, match="out of stock"):
        await breaker.call(op, fallback=fallback)
    assert fallback_calls == []
    assert breaker.metrics().buffered_calls == 0


async def test_fallback_result_is_returned_for_a_recorded_failure() -> None:
    clock = FakeClock()
    breaker = make_breaker(clock)
    error = Boom("down")
    seen: list[BaseException] = []

    async def fallback(exc: BaseException) -> str:
        seen.append(exc)
        return "cached"

    async def op() -> str:
        raise error

    assert await breaker.call(op, fallback=fallback) == "cached"
    assert seen == [error]
    assert breaker.metrics().failed_calls == 1


async def test_fallback_result_is_returned_when_open() -> None:
    clock = FakeClock()
    breaker = make_breaker(clock)
    await trip(breaker, clock)
    seen: list[BaseException] = []

    async def fallback(exc: BaseException) -> str:
        seen.append(exc)
        return "cached"

    async def op() -> str:
        raise AssertionError("must not be called")

    assert await breaker.call(op, fallback=fallback) == "cached"
    assert len(seen) == 1
    assert isinstance(seen[0], CircuitOpenError)
    assert breaker.metrics().not_permitted_calls == 1


async def test_fallback_is_not_used_on_success() -> None:
    clock = FakeClock()
    breaker = make_breaker(clock)

    async def fallback(exc: BaseException) -> str:
        raise AssertionError("must not be called")

    async def op() -> str:
        return "fresh"

    assert await breaker.call(op, fallback=fallback) == "fresh"


async def test_cancellation_is_not_recorded_and_skips_the_fallback() -> None:
    clock = FakeClock()
    breaker = make_breaker(clock)

    async def fallback(exc: BaseException) -> str:
        raise AssertionError("must not be called")

    async def op() -> str:
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await breaker.call(op, fallback=fallback)
    assert breaker.metrics().buffered_calls == 0


async def test_failure_without_fallback_is_reraised_unchanged() -> None:
    clock = FakeClock()
    breaker = make_breaker(clock)
    error = Boom("down")

    async def op() -> str:
        raise error

    with pytest.raises(Boom) as info:
        await breaker.call(op)
    assert info.value is error


# --------------------------------------------------------------------------- listener


async def test_state_change_callback_sees_each_transition() -> None:
    clock = FakeClock()
    seen: list[tuple[str, CircuitState, CircuitState]] = []
    breaker = CircuitBreaker(
        "payments", make_config(), clock=clock, on_state_change=lambda *change: seen.append(change)
    )

    await trip(breaker, clock)
    clock.advance(WAIT)
    await play(breaker, clock, "SSS")

    assert seen == [
        ("payments", CLOSED, OPEN),
        ("payments", OPEN, HALF_OPEN),
        ("payments", HALF_OPEN, CLOSED),
    ]


async def test_failing_state_change_callback_does_not_break_the_breaker(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()

    def listener(name: str, old: CircuitState, new: CircuitState) -> None:
        raise RuntimeError("listener bug")

    breaker = CircuitBreaker("payments", make_config(), clock=clock, on_state_change=listener)
    with caplog.at_level(logging.ERROR, logger="shop.bus.breaker"):
        await trip(breaker, clock)
    assert breaker.state is OPEN
    assert "listener" in caplog.text


async def test_reset_closes_and_force_open_opens() -> None:
    clock = FakeClock()
    breaker = make_breaker(clock)
    breaker.force_open()
    assert breaker.state is OPEN
    breaker.reset()
    assert breaker.state is CLOSED
    assert breaker.try_acquire()


# --------------------------------------------------------------------------- registry


async def test_registry_returns_the_same_breaker_per_name_and_reports_states() -> None:
    clock = FakeClock()
    registry = BreakerRegistry(make_config(), clock=clock)
    stock = registry.get("stock")
    payments = registry.get("payments")

    assert registry.get("stock") is stock
    await trip(payments, clock)

    assert registry.states() == {"payments": "OPEN", "stock": "CLOSED"}
    assert list(registry.states()) == ["payments", "stock"]
    assert list(registry) == [payments, stock]
    assert "stock" in registry
    assert len(registry) == 2


async def test_registry_wires_clock_and_listener_into_breakers() -> None:
    clock = FakeClock()
    seen: list[tuple[str, CircuitState, CircuitState]] = []
    registry = BreakerRegistry(make_config(), clock=clock, on_state_change=lambda *c: seen.append(c))
    breaker = registry.get("stock")
    await trip(breaker, clock)
    clock.advance(WAIT)
    assert registry.states() == {"stock": "HALF_OPEN"}
    assert seen == [("stock", CLOSED, OPEN), ("stock", OPEN, HALF_OPEN)]


def test_registry_applies_configured_overrides_by_name_then_longest_prefix() -> None:
    registry = BreakerRegistry(make_config())
    by_prefix = make_config(sliding_window_size=20)
    by_longer_prefix = make_config(sliding_window_size=30)
    by_name = make_config(sliding_window_size=40)
    registry.configure("http.", by_prefix)
    registry.configure("http.payments", by_longer_prefix)
    registry.configure("http.payments.refunds", by_name)

    assert registry.get("http.stock").config is by_prefix
    assert registry.get("http.payments.capture").config is by_longer_prefix
    assert registry.get("http.payments.refunds").config is by_name
    assert registry.get("redis").config is registry.default_config


def test_registry_rejects_a_conflicting_config_for_an_existing_breaker() -> None:
    registry = BreakerRegistry()
    registry.get("stock", make_config())
    assert registry.get("stock", make_config()).name == "stock"  # equal config is fine
    with pytest.raises(ValueError, match="already exists"):
        registry.get("stock", make_config(sliding_window_size=3))
    with pytest.raises(ValueError, match="already exists"):
        registry.configure("stock", make_config(sliding_window_size=3))


# --------------------------------------------------------------------------- config validation


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        pytest.param({"failure_rate_threshold": 0}, "failure_rate_threshold", id="failure-threshold-zero"),
        pytest.param(
            {"failure_rate_threshold": 100.5}, "failure_rate_threshold", id="failure-threshold-over-100"
        ),
        pytest.param(
            {"failure_rate_threshold": float("nan")}, "failure_rate_threshold", id="failure-threshold-nan"
        ),
        pytest.param(
            {"slow_call_rate_threshold": -1.0}, "slow_call_rate_threshold", id="slow-threshold-negative"
        ),
        pytest.param({"slow_call_duration": 0.0}, "slow_call_duration", id="slow-duration-zero"),
        pytest.param({"sliding_window_size": 0}, "sliding_window_size", id="window-below-one"),
        pytest.param({"sliding_window_size": 2.5}, "sliding_window_size", id="window-not-int"),
        pytest.param({"minimum_number_of_calls": 0}, "minimum_number_of_calls", id="minimum-below-one"),
        pytest.param(
            {"wait_duration_in_open_state": -1.0}, "wait_duration_in_open_state", id="negative-wait"
        ),
        pytest.param(
            {"permitted_calls_in_half_open_state": 0}, "permitted_calls_in_half_open_state", id="no-probes"
        ),
        pytest.param({"ignore_exceptions": (int,)}, "ignore_exceptions", id="ignore-not-exception-class"),
        pytest.param({"record_exceptions": [Exception]}, "record_exceptions", id="record-not-tuple"),
    ],
)
def test_config_validation_rejects_nonsense(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        make_config(**overrides)


def test_default_config_is_valid() -> None:
    config = BreakerConfig()
    assert (config.failure_rate_threshold, config.sliding_window_size) == (50.0, 10)
    assert config.record_exceptions == (Exception,)


def test_state_values_are_the_resilience4j_names() -> None:
    assert [state.value for state in CircuitState] == ["CLOSED", "OPEN", "HALF_OPEN"]


def test_a_success_after_failures_still_opens_the_breaker_when_it_completes_the_minimum() -> None:
    """`on_success` skips the evaluation only for a window of fast successes (ADR 0027)."""
    breaker = CircuitBreaker(
        "fast-path", BreakerConfig(minimum_number_of_calls=5, sliding_window_size=5), clock=FakeClock()
    )
    for _ in range(3):
        breaker.try_acquire()
        breaker.on_error(0.01, RuntimeError("down"))
    for _ in range(2):
        breaker.try_acquire()
        breaker.on_success(0.01)
    assert breaker.state is CircuitState.OPEN  # 3 of 5 failed: 60% >= 50%


def test_a_slow_success_still_counts_as_slow() -> None:
    config = BreakerConfig(
        minimum_number_of_calls=2,
        sliding_window_size=2,
        slow_call_duration=1.0,
        slow_call_rate_threshold=50.0,
    )
    breaker = CircuitBreaker("slow-path", config, clock=FakeClock())
    breaker.on_success(0.01)
    breaker.on_success(1.5)
    assert breaker.state is CircuitState.OPEN
    fast = CircuitBreaker("fast-only", config, clock=FakeClock())
    for _ in range(10):
        fast.on_success(0.01)
    assert fast.state is CircuitState.CLOSED
    assert fast.metrics().buffered_calls == 2
