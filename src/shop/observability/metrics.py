"""The Prometheus metric families of every Shop process; names and labels are stable."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import structlog
from prometheus_client import Counter, Gauge, Histogram

if TYPE_CHECKING:
    from shop.bus.breaker import CircuitState

HTTP_REQUESTS = Counter("shop_http_requests_total", "HTTP requests answered", ["method", "route", "status"])
HTTP_LATENCY = Histogram(
    "shop_http_request_duration_seconds",
    "HTTP request latency",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
BUS_HANDLED = Counter("shop_bus_messages_handled_total", "Messages handled", ["consumer", "type"])
BUS_FAILED = Counter("shop_bus_messages_failed_total", "Handler failures", ["consumer", "type"])
BUS_RETRIED = Counter("shop_bus_messages_retried_total", "Deliveries scheduled again", ["consumer", "type"])
BUS_DEAD = Counter("shop_bus_messages_dead_lettered_total", "Messages dead-lettered", ["consumer", "type"])
BUS_DUPLICATES = Counter("shop_bus_messages_duplicate_total", "Duplicates skipped by the inbox", ["consumer"])
HANDLER_LATENCY = Histogram(
    "shop_bus_handler_duration_seconds",
    "Handler latency",
    ["consumer"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0),
)
OUTBOX_LAG = Histogram(
    "shop_outbox_lag_seconds",
    "Time from an outbox write to its delivery",
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0),
)
BREAKER_STATE = Gauge(
    "shop_breaker_state", "Circuit breaker state (0 closed, 1 half-open, 2 open)", ["breaker"]
)
SAGAS = Counter("shop_sagas_finished_total", "Sagas that reached a final state", ["type", "status"])
SAGAS_ACTIVE = Gauge("shop_sagas_active", "Sagas not yet final, by state", ["type", "status"])
REGISTRY_INSTANCES = Gauge("shop_registry_instances", "Registered instances by module", ["module", "healthy"])
RATE_LIMITED = Counter("shop_rate_limited_total", "Requests refused by the rate limiter", ["scope"])
BUS_QUEUE_DEPTH = Gauge("shop_bus_queue_depth", "Messages waiting in a module's queue", ["queue"])
SAGAS_OVERDUE = Gauge(
    "shop_sagas_overdue", "Sagas not final whose step or saga deadline has passed", ["type"]
)

BREAKER_VALUES = {"CLOSED": 0, "HALF_OPEN": 1, "OPEN": 2}


_HTTP_CHILDREN: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def observe_http(method: str, route: str, status: int, seconds: float) -> None:
    """Count one answered request: the labelled children are looked up once per (method, route,
    status), not per request (bounded: methods and route templates, never raw paths)."""
    children = _HTTP_CHILDREN.get((method, route, status))
    if children is None:
        children = _HTTP_CHILDREN[(method, route, status)] = (
            HTTP_LATENCY.labels(method, route),
            HTTP_REQUESTS.labels(method, route, str(status)),
        )
    children[0].observe(seconds)
    children[1].inc()


def set_breaker_state(name: str, state: str) -> None:
    """The gauge of one breaker (`state` is a CircuitState value)."""
    BREAKER_STATE.labels(name).set(BREAKER_VALUES[state])


def on_breaker_change(name: str, old: CircuitState, new: CircuitState) -> None:
    """A BreakerRegistry listener: the breaker-state gauge and a log line."""
    set_breaker_state(name, new.value)
    _log.warning("breaker.state_changed", breaker=name, old=old.value, new=new.value)


# -- gauges read at scrape time -----------------------------------------------------------------
# What is cheap to read but not worth updating on every change (queue depths, sagas per state
# from the database, breaker states) is read by "scrape hooks" that /metrics awaits before it
# renders: each under a timeout, never blocking the event loop; one that fails leaves the last
# values in place and logs why.

ScrapeHook = Callable[[], Awaitable[None]]
SCRAPE_TIMEOUT_S = 1.0
_scrape_hooks: dict[str, ScrapeHook] = {}
_log = structlog.get_logger("shop.metrics")


def on_scrape(key: str, hook: ScrapeHook) -> None:
    """Await `hook` before every /metrics answer of this process (replacing any under `key`)."""
    _scrape_hooks[key] = hook


def off_scrape(key: str) -> None:
    _scrape_hooks.pop(key, None)


async def refresh() -> None:
    """Run every scrape hook (concurrently, each bounded by SCRAPE_TIMEOUT_S)."""
    hooks = list(_scrape_hooks.items())
    if hooks:
        await asyncio.gather(*(_run_hook(key, hook) for key, hook in hooks))


async def _run_hook(key: str, hook: ScrapeHook) -> None:
    try:
        await asyncio.wait_for(hook(), SCRAPE_TIMEOUT_S)
    except Exception as exc:  # a gauge that cannot be read keeps its last value
        _log.warning("metrics.scrape_hook_failed", hook=key, error=repr(exc))


class LabelledGauge:
    """Sets a gauge from a complete reading: label sets missing from it since the last reading
    go to 0 instead of keeping a stale value."""

    def __init__(self, gauge: Gauge) -> None:
        self.gauge = gauge
        self._seen: set[tuple[str, ...]] = set()

    def set_all(self, values: Mapping[tuple[str, ...], float]) -> None:
        for labels in self._seen - values.keys():
            self.gauge.labels(*labels).set(0)
        for labels, value in values.items():
            self.gauge.labels(*labels).set(value)
        self._seen |= values.keys()


SAGAS_ACTIVE_READING = LabelledGauge(SAGAS_ACTIVE)
SAGAS_OVERDUE_READING = LabelledGauge(SAGAS_OVERDUE)
