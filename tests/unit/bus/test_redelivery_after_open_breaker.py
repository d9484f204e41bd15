"""A message whose handler found a dependency behind an open breaker comes back when that
breaker takes calls again, not after the bus's short backoff (found by the property tests: a
provider outage of a few seconds dead-lettered TakePayment)."""

from __future__ import annotations

from shop.bus.breaker import CircuitOpenError
from shop.bus.bus import Bus
from shop.bus.messages import Command, new_envelope
from shop.bus.module import Module
from shop.bus.retry import RetryPolicy
from shop.bus.transports.base import Outcome
from shop.bus.transports.inprocess import InProcessTransport

module = Module("probe")


class ProbeWithOpenBreaker(Command, frozen=True, kw_only=True):
    failure: str  # "open": the breaker's error; "wrapped": the handler's, caused by it; "plain"


class DependencyDown(Exception):
    pass


@module.handles(ProbeWithOpenBreaker, transactional=False)
async def call_the_dependency(cmd: ProbeWithOpenBreaker) -> None:
    if cmd.failure == "plain":
        raise DependencyDown("a plain failure")
    try:
        raise CircuitOpenError("provider:probe", retry_after=7.5)
    except CircuitOpenError as exc:
        if cmd.failure == "wrapped":
            raise DependencyDown("the outcome is unknown") from exc
        raise


def bus() -> Bus:
    built = Bus([module], InProcessTransport(), local=["probe"], databases={})
    built.bind()
    return built


async def test_a_handler_failing_on_an_open_breaker_is_retried_after_the_breaker_wait() -> None:
    envelope = new_envelope(ProbeWithOpenBreaker(failure="open"), consumer="probe.call_the_dependency")
    result = await bus().process("probe", envelope)
    assert result.outcome is Outcome.RETRY
    assert result.delay >= 7.5


async def test_the_breaker_wait_is_found_behind_the_handler_own_exception() -> None:
    envelope = new_envelope(ProbeWithOpenBreaker(failure="wrapped"), consumer="probe.call_the_dependency")
    result = await bus().process("probe", envelope)
    assert result.outcome is Outcome.RETRY
    assert result.delay >= 7.5


async def test_other_failures_keep_the_short_backoff() -> None:
    failing = bus()
    failing.retry = RetryPolicy(base_delay=0.05, max_delay=0.5, jitter=0.0)
    envelope = new_envelope(ProbeWithOpenBreaker(failure="plain"), consumer="probe.call_the_dependency")
    result = await failing.process("probe", envelope)
    assert result.outcome is Outcome.RETRY
    assert result.delay == 0.05
