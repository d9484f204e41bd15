"""Backoff policy and retry loop, with seeded randomness and a fake sleep (no real waiting)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from shop.bus.retry import RetryPolicy, retry_async


class FakeSleep:
    """Records requested delays instead of sleeping."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


class Transient(Exception):
    """A failure worth retrying."""


class Permanent(Exception):
    """A failure outside retry_on."""


class Flaky:
    """Fails with ``Transient(attempt)`` for the first ``failures`` calls, then returns ``"done"``."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise Transient(self.calls)
        return "done"


NO_JITTER = RetryPolicy(max_attempts=5, base_delay=0.1, max_delay=10.0, multiplier=2.0, jitter=0.0)


# --------------------------------------------------------------------------- delay


def test_delays_grow_exponentially() -> None:
    assert [NO_JITTER.delay(attempt) for attempt in range(1, 6)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6])


def test_delays_are_capped_at_max_delay() -> None:
    policy = RetryPolicy(base_delay=1.0, max_delay=3.0, multiplier=2.0, jitter=0.0)
    assert [policy.delay(attempt) for attempt in (1, 2, 3, 4)] == [1.0, 2.0, 3.0, 3.0]


def test_huge_attempt_numbers_stay_capped_instead_of_overflowing() -> None:
    policy = RetryPolicy(base_delay=1.0, max_delay=3.0, multiplier=2.0, jitter=0.0)
    assert policy.delay(10_000) == 3.0


def test_zero_base_delay_never_waits() -> None:
    policy = RetryPolicy(base_delay=0.0, max_delay=0.0)
    assert policy.delay(10_000, random.Random(1)) == 0.0


def test_jitter_stays_within_bounds() -> None:
    policy = RetryPolicy(base_delay=0.1, max_delay=1.0, multiplier=2.0, jitter=0.5)
    rng = random.Random(42)
    for attempt in range(1, 10):
        ceiling = min(1.0, 0.1 * 2.0 ** (attempt - 1))
        for _ in range(200):
            assert ceiling * 0.5 <= policy.delay(attempt, rng) <= ceiling


def test_jitter_actually_varies_and_is_reproducible_with_a_seed() -> None:
    policy = RetryPolicy(jitter=0.5)
    first = [policy.delay(3, random.Random(7)) for _ in range(3)]
    rng = random.Random(7)
    drawn = [policy.delay(3, rng) for _ in range(50)]
    assert first == [drawn[0]] * 3
    assert len(set(drawn)) > 1


def test_full_jitter_may_go_down_to_zero() -> None:
    policy = RetryPolicy(base_delay=1.0, max_delay=1.0, jitter=1.0)
    rng = random.Random(3)
    assert all(0.0 <= policy.delay(1, rng) <= 1.0 for _ in range(100))


def test_delay_rejects_attempt_below_one() -> None:
    with pytest.raises(ValueError, match="attempt"):
        NO_JITTER.delay(0)


@pytest.mark.parametrize(
    ("attempt", "expected"),
    [(1, True), (4, True), (5, False), (6, False)],
)
def test_should_retry_until_max_attempts(attempt: int, expected: bool) -> None:
    assert RetryPolicy(max_attempts=5).should_retry(attempt) is expected


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        pytest.param({"max_attempts": 0}, "max_attempts", id="no-attempts"),
        pytest.param({"max_attempts": 2.0}, "max_attempts", id="attempts-not-int"),
        pytest.param({"base_delay": -0.1}, "base_delay", id="negative-base-delay"),
        pytest.param({"base_delay": 2.0, "max_delay": 1.0}, "max_delay", id="max-below-base"),
        pytest.param({"max_delay": float("inf")}, "max_delay", id="infinite-max-delay"),
        pytest.param({"multiplier": 0.5}, "multiplier", id="shrinking-multiplier"),
        pytest.param({"jitter": 1.5}, "jitter", id="jitter-over-one"),
        pytest.param({"jitter": -0.1}, "jitter", id="negative-jitter"),
    ],
)
def test_policy_validation_rejects_nonsense(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        RetryPolicy(**overrides)


# --------------------------------------------------------------------------- retry_async


async def test_first_success_returns_without_sleeping() -> None:
    sleep = FakeSleep()
    fn = Flaky(failures=0)
    assert await retry_async(fn, NO_JITTER, sleep=sleep) == "done"
    assert (fn.calls, sleep.delays) == (1, [])


async def test_succeeds_on_a_later_attempt_after_backing_off() -> None:
    sleep = FakeSleep()
    fn = Flaky(failures=2)
    assert await retry_async(fn, NO_JITTER, sleep=sleep) == "done"
    assert fn.calls == 3
    assert sleep.delays == pytest.approx([0.1, 0.2])


async def test_stops_after_max_attempts_and_reraises_the_last_error() -> None:
    sleep = FakeSleep()
    fn = Flaky(failures=100)
    with pytest.raises(Transient) as info:
        await retry_async(fn, NO_JITTER, sleep=sleep)
    assert fn.calls == 5
    assert info.value.args == (5,)  # the last attempt's error, not the first
    assert sleep.delays == pytest.approx([0.1, 0.2, 0.4, 0.8])


async def test_single_attempt_policy_never_retries() -> None:
    sleep = FakeSleep()
    fn = Flaky(failures=1)
    with pytest.raises(Transient):
        await retry_async(fn, RetryPolicy(max_attempts=1), sleep=sleep)
    assert (fn.calls, sleep.delays) == (1, [])


async def test_does_not_retry_exceptions_outside_retry_on() -> None:
    sleep = FakeSleep()
    calls = 0

    async def fn() -> str:
        nonlocal calls
        calls += 1
        raise Permanent("no")

    with pytest.raises(Permanent):
        await retry_async(fn, NO_JITTER, retry_on=(Transient,), sleep=sleep)
    assert (calls, sleep.delays) == (1, [])


async def test_jittered_sleeps_use_the_given_rng() -> None:
    policy = RetryPolicy(max_attempts=4, base_delay=0.1, max_delay=10.0, jitter=0.5)
    sleep = FakeSleep()
    with pytest.raises(Transient):
        await retry_async(Flaky(failures=100), policy, sleep=sleep, rng=random.Random(5))
    rng = random.Random(5)
    assert sleep.delays == [policy.delay(attempt, rng) for attempt in (1, 2, 3)]
