"""Circuit breaker with Resilience4j semantics, for asyncio code.

A :class:`CircuitBreaker` guards calls to something that can fail (a remote
service, a broker, a database).  It has three states:

* ``CLOSED`` -- calls pass; outcomes go into a count-based sliding window of the
  last ``sliding_window_size`` calls.  Once the window holds at least
  ``minimum_number_of_calls`` outcomes and the failure rate or the slow-call rate
  reaches its threshold, the breaker opens.
* ``OPEN`` -- calls are rejected without being made (:class:`CircuitOpenError`)
  until ``wait_duration_in_open_state`` has elapsed; then the next access to the
  breaker moves it to ``HALF_OPEN``.
* ``HALF_OPEN`` -- exactly ``permitted_calls_in_half_open_state`` probe calls are
  let through.  Once all of their outcomes are in, the rates over those probes
  decide: at or over a threshold the breaker opens again (with a fresh wait),
  otherwise it closes with a fresh window.

Outcome classification follows Resilience4j: exceptions in ``ignore_exceptions``
(business rejections) are not recorded at all and always propagate; exceptions in
``record_exceptions`` are failures; any other exception counts as a success.
Exceptions that are not :class:`Exception` subclasses (``asyncio.CancelledError``,
``KeyboardInterrupt``...) are treated as ignored unless listed explicitly in
``record_exceptions``: a cancelled call says nothing about the health of the
callee.

Time comes from an injectable monotonic clock (seconds as float), so tests can
drive the breaker deterministically.  The module is single-threaded by design
(asyncio) and never blocks.
"""

from __future__ import annotations

import enum
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TypeAlias, TypeVar

__all__ = [
    "BreakerConfig",
    "BreakerMetrics",
    "BreakerRegistry",
    "CircuitBreaker",
    "CircuitOpenError",
    "CircuitState",
    "Clock",
    "StateListener",
]

T = TypeVar("T")

Clock: TypeAlias = Callable[[], float]
"""A monotonic clock returning seconds."""

_log = logging.getLogger(__name__)


class CircuitState(enum.StrEnum):
    """The state of a circuit breaker."""

    CLOSED = "CLOSED"
    OPEN = "OPEN"
    HALF_OPEN = "HALF_OPEN"


StateListener: TypeAlias = Callable[[str, CircuitState, CircuitState], None]
"""Called as ``listener(breaker_name, from_state, to_state)`` on every transition."""


def _check_percentage(field: str, value: float) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"{field} must be a finite number, got {value!r}")
    if not 0.0 < value <= 100.0:
        raise ValueError(f"{field} must be a percentage in (0, 100], got {value!r}")


def _check_seconds(field: str, value: float, *, allow_zero: bool) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"{field} must be a finite number of seconds, got {value!r}")
    if value < 0.0 or (value == 0.0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{field} must be {bound} seconds, got {value!r}")


def _check_count(field: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{field} must be an int, got {value!r}")
    if value < 1:
        raise ValueError(f"{field} must be >= 1, got {value!r}")


def _check_exception_types(field: str, value: tuple[type[BaseException], ...]) -> None:
    if not isinstance(value, tuple):
        raise ValueError(f"{field} must be a tuple of exception classes, got {value!r}")
    for item in value:
        if not (isinstance(item, type) and issubclass(item, BaseException)):
            raise ValueError(f"{field} must contain only exception classes, got {item!r}")


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    """Immutable circuit breaker settings (names and defaults as in Resilience4j).

    Rates are percentages, durations are seconds.  For the count-based window the
    effective minimum number of calls is ``min(minimum_number_of_calls,
    sliding_window_size)``, as in Resilience4j.
    """

    failure_rate_threshold: float = 50.0
    slow_call_rate_threshold: float = 100.0
    slow_call_duration: float = 2.0
    sliding_window_size: int = 10
    minimum_number_of_calls: int = 5
    wait_duration_in_open_state: float = 10.0
    permitted_calls_in_half_open_state: int = 3
    ignore_exceptions: tuple[type[BaseException], ...] = ()
    record_exceptions: tuple[type[BaseException], ...] = (Exception,)

    def __post_init__(self) -> None:
        _check_percentage("failure_rate_threshold", self.failure_rate_threshold)
        _check_percentage("slow_call_rate_threshold", self.slow_call_rate_threshold)
        _check_seconds("slow_call_duration", self.slow_call_duration, allow_zero=False)
        _check_count("sliding_window_size", self.sliding_window_size)
        _check_count("minimum_number_of_calls", self.minimum_number_of_calls)
        _check_seconds("wait_duration_in_open_state", self.wait_duration_in_open_state, allow_zero=True)
        _check_count("permitted_calls_in_half_open_state", self.permitted_calls_in_half_open_state)
        _check_exception_types("ignore_exceptions", self.ignore_exceptions)
        _check_exception_types("record_exceptions", self.record_exceptions)


@dataclass(frozen=True, slots=True)
class BreakerMetrics:
    """A snapshot of a breaker's current window.

    ``failure_rate`` and ``slow_call_rate`` are percentages, ``-1.0`` while the
    window holds fewer calls than the minimum (Resilience4j convention).  In
    ``HALF_OPEN`` the window is the probes of the current half-open period.
    ``not_permitted_calls`` counts rejections since the last state transition.
    """

    state: CircuitState
    failure_rate: float
    slow_call_rate: float
    buffered_calls: int
    failed_calls: int
    slow_calls: int
    not_permitted_calls: int


class CircuitOpenError(Exception):
    """Raised instead of making a call the breaker does not permit."""

    def __init__(
        self, breaker: str, state: CircuitState = CircuitState.OPEN, retry_after: float | None = None
    ) -> None:
        super().__init__(breaker, state)
        self.breaker = breaker
        self.state = state
        self.retry_after = retry_after  # seconds until the breaker lets a probe through, if known

    def __str__(self) -> str:
        return f"circuit breaker {self.breaker!r} is {self.state.value} and does not permit further calls"


class _Outcome(enum.Enum):
    SUCCESS = enum.auto()
    FAILURE = enum.auto()
    IGNORED = enum.auto()


_OK = (False, False)


class _Window:
    """Count-based window of the last ``size`` outcomes with running totals."""

    __slots__ = ("_calls", "failed", "slow")

    def __init__(self, size: int) -> None:
        self._calls: deque[tuple[bool, bool]] = deque(maxlen=size)
        self.failed = 0
        self.slow = 0

    def __len__(self) -> int:
        return len(self._calls)

    def add(self, *, failed: bool, slow: bool) -> None:
        if len(self._calls) == self._calls.maxlen:
            old_failed, old_slow = self._calls[0]
            self.failed -= old_failed
            self.slow -= old_slow
        self._calls.append((failed, slow))
        self.failed += failed
        self.slow += slow

    def add_ok(self) -> None:
        """Add a fast success to a window whose calls are all fast successes (no totals move)."""
        self._calls.append(_OK)

    def rates(self, minimum: int) -> tuple[float, float]:
        """Failure and slow-call rates in percent, or ``-1.0`` below ``minimum`` calls."""
        total = len(self._calls)
        if total == 0 or total < minimum:
            return -1.0, -1.0
        return self.failed * 100.0 / total, self.slow * 100.0 / total


class CircuitBreaker:
    """A single named circuit breaker; see the module docstring for the semantics."""

    def __init__(
        self,
        name: str,
        config: BreakerConfig | None = None,
        clock: Clock = time.monotonic,
        on_state_change: StateListener | None = None,
    ) -> None:
        self.name = name
        self.config = config if config is not None else BreakerConfig()
        self._clock = clock
        self._on_state_change = on_state_change
        self._state = CircuitState.CLOSED
        self._generation = 0
        self._opened_at = 0.0
        self._half_open_permits = 0
        self._not_permitted = 0
        self._window = self._new_window(CircuitState.CLOSED)

    def __repr__(self) -> str:
        return f"CircuitBreaker(name={self.name!r}, state={self._state.value})"

    # -- state ------------------------------------------------------------------

    @property
    def state(self) -> CircuitState:
        """The current state; an OPEN breaker whose wait has elapsed becomes HALF_OPEN here."""
        if (
            self._state is CircuitState.OPEN
            and self._clock() - self._opened_at >= self.config.wait_duration_in_open_state
        ):
            self._transition(CircuitState.HALF_OPEN)
        return self._state

    @property
    def retry_after(self) -> float | None:
        """Seconds until an OPEN breaker lets probes through (None when not OPEN)."""
        if self._state is not CircuitState.OPEN:
            return None
        return max(0.0, self._opened_at + self.config.wait_duration_in_open_state - self._clock())

    def rejection(self) -> CircuitOpenError:
        """The error for a call this breaker does not permit."""
        return CircuitOpenError(self.name, self._state, self.retry_after)

    def _new_window(self, state: CircuitState) -> _Window:
        if state is CircuitState.HALF_OPEN:
            return _Window(self.config.permitted_calls_in_half_open_state)
        return _Window(self.config.sliding_window_size)

    def _minimum_calls(self) -> int:
        if self._state is CircuitState.HALF_OPEN:
            return self.config.permitted_calls_in_half_open_state
        return min(self.config.minimum_number_of_calls, self.config.sliding_window_size)

    def _transition(self, to: CircuitState) -> None:
        previous = self._state
        self._state = to
        self._generation += 1
        self._window = self._new_window(to)
        self._half_open_permits = 0
        self._not_permitted = 0
        if to is CircuitState.OPEN:
            self._opened_at = self._clock()
        if self._on_state_change is not None and previous is not to:
            try:
                self._on_state_change(self.name, previous, to)
            except Exception:
                _log.exception("state-change listener failed for circuit breaker %r", self.name)

    def reset(self) -> None:
        """Return to CLOSED with an empty window (listener notified if the state changes)."""
        self._transition(CircuitState.CLOSED)

    def force_open(self) -> None:
        """Open now; the usual wait then leads to HALF_OPEN as for a tripped breaker."""
        self._transition(CircuitState.OPEN)

    # -- permission and outcomes -----------------------------------------------

    def try_acquire(self) -> bool:
        """Ask for permission to make one call; a refusal is counted as not permitted."""
        if self._state is CircuitState.CLOSED:
            return True
        state = self.state
        if state is CircuitState.CLOSED:
            return True
        if (
            state is CircuitState.HALF_OPEN
            and self._half_open_permits < self.config.permitted_calls_in_half_open_state
        ):
            self._half_open_permits += 1
            return True
        self._not_permitted += 1
        return False

    def release_permission(self) -> None:
        """A permitted call ended with an outcome that says nothing about the dependency:
        record nothing, and hand a half-open probe slot back (Resilience4j's releasePermission)."""
        self._record(_Outcome.IGNORED, 0.0, None)

    def on_success(self, duration: float) -> None:
        """Record a successful call that took ``duration`` seconds."""
        window = self._window
        if (
            self._state is CircuitState.CLOSED
            and not window.failed
            and not window.slow
            and duration < self.config.slow_call_duration
        ):
            # A fast success into a CLOSED window holding no failure and no slow call cannot
            # reach a threshold: append it and skip the evaluation (the hot path of every ask).
            window.add_ok()
            return
        self._record(_Outcome.SUCCESS, duration, None)

    def on_error(self, duration: float, exc: BaseException) -> None:
        """Record a call that raised ``exc`` after ``duration`` seconds (classified per config)."""
        self._record(self._classify(exc), duration, None)

    def _classify(self, exc: BaseException) -> _Outcome:
        cfg = self.config
        if isinstance(exc, cfg.ignore_exceptions):
            return _Outcome.IGNORED
        if isinstance(exc, cfg.record_exceptions):
            return _Outcome.FAILURE
        if not isinstance(exc, Exception):
            return _Outcome.IGNORED
        return _Outcome.SUCCESS

    def _record(self, outcome: _Outcome, duration: float, generation: int | None) -> None:
        # Outcomes of calls permitted before the last transition say nothing about
        # the current period; neither do calls finishing while the breaker is OPEN.
        if generation is not None and generation != self._generation:
            return
        if self._state is CircuitState.OPEN:
            return
        if outcome is _Outcome.IGNORED:
            if self._state is CircuitState.HALF_OPEN and self._half_open_permits > 0:
                self._half_open_permits -= 1  # hand the probe slot back, as Resilience4j does
            return
        self._window.add(
            failed=outcome is _Outcome.FAILURE,
            slow=duration >= self.config.slow_call_duration,
        )
        self._evaluate()

    def _over_threshold(self) -> bool:
        failure_rate, slow_rate = self._window.rates(self._minimum_calls())
        if failure_rate < 0:
            return False
        return (
            failure_rate >= self.config.failure_rate_threshold
            or slow_rate >= self.config.slow_call_rate_threshold
        )

    def _evaluate(self) -> None:
        if self._state is CircuitState.CLOSED:
            if self._over_threshold():
                self._transition(CircuitState.OPEN)
        elif len(self._window) >= self.config.permitted_calls_in_half_open_state:
            self._transition(CircuitState.OPEN if self._over_threshold() else CircuitState.CLOSED)

    # -- guarded call -----------------------------------------------------------

    async def call(
        self,
        fn: Callable[[], Awaitable[T]],
        *,
        fallback: Callable[[BaseException], Awaitable[T]] | None = None,
    ) -> T:
        """Await ``fn()`` if permitted, timing it with the clock and recording the outcome.

        Not permitted: raise :class:`CircuitOpenError`, or return ``await fallback(error)``.
        Recorded failure: re-raise, or return ``await fallback(exc)``.  Ignored exceptions
        and exceptions counted as success always propagate and never reach the fallback.
        """
        if not self.try_acquire():
            error = self.rejection()
            if fallback is None:
                raise error
            return await fallback(error)
        generation = self._generation
        started = self._clock()
        try:
            result = await fn()
        except BaseException as exc:
            outcome = self._classify(exc)
            self._record(outcome, self._clock() - started, generation)
            if outcome is _Outcome.FAILURE and fallback is not None:
                return await fallback(exc)
            raise
        self._record(_Outcome.SUCCESS, self._clock() - started, generation)
        return result

    # -- observation ------------------------------------------------------------

    def metrics(self) -> BreakerMetrics:
        """A snapshot of the current state and window."""
        state = self.state
        failure_rate, slow_rate = self._window.rates(self._minimum_calls())
        return BreakerMetrics(
            state=state,
            failure_rate=failure_rate,
            slow_call_rate=slow_rate,
            buffered_calls=len(self._window),
            failed_calls=self._window.failed,
            slow_calls=self._window.slow,
            not_permitted_calls=self._not_permitted,
        )


class BreakerRegistry:
    """Creates each named breaker once and hands out the same object afterwards.

    Configuration for a breaker is, in order: the ``config`` passed to :meth:`get`,
    the override registered with :meth:`configure` for the exact name or the longest
    matching name prefix, then the registry's default.
    """

    def __init__(
        self,
        default_config: BreakerConfig | None = None,
        clock: Clock = time.monotonic,
        on_state_change: StateListener | None = None,
    ) -> None:
        self.default_config = default_config if default_config is not None else BreakerConfig()
        self._clock = clock
        self._on_state_change = on_state_change
        self._breakers: dict[str, CircuitBreaker] = {}
        self._overrides: dict[str, BreakerConfig] = {}

    def configure(self, name_or_prefix: str, config: BreakerConfig) -> None:
        """Register ``config`` for breakers named ``name_or_prefix`` or starting with it.

        Only affects breakers created afterwards; configuring the exact name of an
        existing breaker with a different config is an error.
        """
        existing = self._breakers.get(name_or_prefix)
        if existing is not None and existing.config != config:
            raise ValueError(f"circuit breaker {name_or_prefix!r} already exists with another config")
        self._overrides[name_or_prefix] = config

    def config_for(self, name: str) -> BreakerConfig:
        """The config a new breaker called ``name`` would get (without an explicit config)."""
        matches = [key for key in self._overrides if name.startswith(key)]
        if not matches:
            return self.default_config
        return self._overrides[max(matches, key=len)]

    def get(self, name: str, config: BreakerConfig | None = None) -> CircuitBreaker:
        """The breaker called ``name``, created on first use.

        Raises ``ValueError`` if ``config`` is given and differs from the config the
        existing breaker was created with.
        """
        breaker = self._breakers.get(name)
        if breaker is None:
            breaker = CircuitBreaker(
                name,
                config if config is not None else self.config_for(name),
                clock=self._clock,
                on_state_change=self._on_state_change,
            )
            self._breakers[name] = breaker
        elif config is not None and config != breaker.config:
            raise ValueError(f"circuit breaker {name!r} already exists with another config")
        return breaker

    def states(self) -> dict[str, str]:
        """Breaker name to state value, sorted by name."""
        return {name: self._breakers[name].state.value for name in sorted(self._breakers)}

    def __iter__(self) -> Iterator[CircuitBreaker]:
        return iter([self._breakers[name] for name in sorted(self._breakers)])

    def __len__(self) -> int:
        return len(self._breakers)

    def __contains__(self, name: object) -> bool:
        return name in self._breakers
