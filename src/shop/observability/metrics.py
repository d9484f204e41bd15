"""The Prometheus metric families of every Shop process; names and labels are stable."""

from __future__ import annotations

import asyncio
import threading
import time
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.samples import Sample

from shop.observability.loggers import get_logger

if TYPE_CHECKING:
    from shop.bus.breaker import CircuitState

HTTP_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BUS_FAILED = Counter("shop_bus_messages_failed_total", "Handler failures", ["consumer", "type"])
BUS_RETRIED = Counter("shop_bus_messages_retried_total", "Deliveries scheduled again", ["consumer", "type"])
BUS_DEAD = Counter("shop_bus_messages_dead_lettered_total", "Messages dead-lettered", ["consumer", "type"])
BUS_DUPLICATES = Counter("shop_bus_messages_duplicate_total", "Duplicates skipped by the inbox", ["consumer"])
HANDLER_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)
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


class HttpMetrics:
    """`shop_http_requests_total{method,route,status}` and `shop_http_request_duration_seconds
    {method,route}` (a histogram on HTTP_LATENCY_BUCKETS), the same families a prometheus_client
    Counter and Histogram would give, counted in plain lists instead.

    `observe` runs for every answered request: one dict lookup, one bisect and three additions
    (no label lookup, no lock: it runs on the event loop, the one thread that answers requests);
    the families are built from the lists when the registry is collected (a scrape, or
    `REGISTRY.get_sample_value`)."""

    #: The label names of each family (what a Counter's or Histogram's `_labelnames` say).
    LABELS: Mapping[str, tuple[str, ...]] = {
        "shop_http_requests": ("method", "route", "status"),
        "shop_http_request_duration_seconds": ("method", "route"),
    }

    def __init__(self) -> None:
        # (method, route, status) -> [count, sum of seconds, count per bucket ..., count past the last]
        self._cells: dict[tuple[str, str, int], list[float]] = {}
        self._created: dict[tuple[str, ...], float] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        cell = self._cells.get((method, route, status))
        if cell is None:
            cell = self._new_cell(method, route, status)
        cell[0] += 1
        cell[1] += seconds
        cell[2 + bisect_left(HTTP_LATENCY_BUCKETS, seconds)] += 1  # the first bucket with le >= seconds

    def _new_cell(self, method: str, route: str, status: int) -> list[float]:
        now = time.time()
        self._created.setdefault((method, route, str(status)), now)
        self._created.setdefault((method, route), now)
        cell = self._cells[(method, route, status)] = [0.0] * (3 + len(HTTP_LATENCY_BUCKETS))
        return cell

    def describe(self) -> list[Metric]:
        return list(self._families())

    @staticmethod
    def _families() -> tuple[CounterMetricFamily, HistogramMetricFamily]:
        requests, latency = "shop_http_requests", "shop_http_request_duration_seconds"
        return (
            CounterMetricFamily(requests, "HTTP requests answered", labels=HttpMetrics.LABELS[requests]),
            HistogramMetricFamily(latency, "HTTP request latency", labels=HttpMetrics.LABELS[latency]),
        )

    def collect(self) -> Iterator[Metric]:
        requests, latency = self._families()
        routes: dict[tuple[str, str], list[float]] = {}
        for (method, route, status), cell in list(self._cells.items()):
            key = (method, route, str(status))
            requests.add_metric(key, cell[0], created=self._created[key])
            total = routes.setdefault((method, route), [0.0] * len(cell))
            for i, value in enumerate(cell):
                total[i] += value
        for (method, route), total in routes.items():
            latency.add_metric((method, route), _cumulative(HTTP_LATENCY_BUCKETS, total), total[1])
            created = self._created[(method, route)]
            latency.samples.append(
                Sample(f"{latency.name}_created", {"method": method, "route": route}, created)
            )
        yield requests
        yield latency


def _cumulative(bounds: tuple[float, ...], cell: list[float]) -> list[tuple[str, float]]:
    """A histogram's buckets (`le`, cumulative count) from a cell's counts per bucket
    (`cell[2:]`, the last one past the last bound)."""
    cumulative, buckets = 0.0, []
    for bound, n in zip((*bounds, float("inf")), cell[2:], strict=True):
        cumulative += n
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
    return buckets


HTTP = HttpMetrics()
REGISTRY.register(HTTP)


class BusHandlerMetrics:
    """`shop_bus_messages_handled_total{consumer,type}` and `shop_bus_handler_duration_seconds
    {consumer}` (a histogram on HANDLER_LATENCY_BUCKETS), counted in plain lists like
    `HttpMetrics` (ADR 0027) and built when the registry is collected.

    Handlers run on more than one thread in a `shop serve` process (the HTTP loop's local asks,
    the Dramatiq loop's deliveries), so each thread counts in cells of its own (one thread never
    writes another's list) and a scrape adds them up."""

    LABELS: Mapping[str, tuple[str, ...]] = {
        "shop_bus_messages_handled": ("consumer", "type"),
        "shop_bus_handler_duration_seconds": ("consumer",),
    }

    def __init__(self) -> None:
        # (consumer, type, thread id) -> [count, sum of seconds, count per bucket ..., past the last]
        self._cells: dict[tuple[str, str, int], list[float]] = {}
        self._created: dict[tuple[str, ...], float] = {}

    def cell(self, consumer: str, message_type: str) -> list[float]:
        """The calling thread's cell for (consumer, type): what `count` adds to."""
        key = (consumer, message_type, threading.get_ident())
        cell = self._cells.get(key)
        if cell is None:
            now = time.time()
            self._created.setdefault((consumer, message_type), now)
            self._created.setdefault((consumer,), now)
            cell = self._cells[key] = [0.0] * (3 + len(HANDLER_LATENCY_BUCKETS))
        return cell

    def observe(self, consumer: str, message_type: str, seconds: float) -> None:
        """Count one handled message that took `seconds`."""
        count(self.cell(consumer, message_type), seconds)

    def describe(self) -> list[Metric]:
        return list(self._families())

    @staticmethod
    def _families() -> tuple[CounterMetricFamily, HistogramMetricFamily]:
        handled, latency = "shop_bus_messages_handled", "shop_bus_handler_duration_seconds"
        return (
            CounterMetricFamily(handled, "Messages handled", labels=BusHandlerMetrics.LABELS[handled]),
            HistogramMetricFamily(latency, "Handler latency", labels=BusHandlerMetrics.LABELS[latency]),
        )

    def collect(self) -> Iterator[Metric]:
        handled, latency = self._families()
        by_type: dict[tuple[str, str], list[float]] = {}
        by_consumer: dict[str, list[float]] = {}
        for (consumer, message_type, _thread), cell in list(self._cells.items()):
            for total in (
                by_type.setdefault((consumer, message_type), [0.0] * len(cell)),
                by_consumer.setdefault(consumer, [0.0] * len(cell)),
            ):
                for i, value in enumerate(cell):
                    total[i] += value
        for key, total in by_type.items():
            handled.add_metric(key, total[0], created=self._created[key])
        for consumer, total in by_consumer.items():
            latency.add_metric((consumer,), _cumulative(HANDLER_LATENCY_BUCKETS, total), total[1])
            latency.samples.append(
                Sample(f"{latency.name}_created", {"consumer": consumer}, self._created[(consumer,)])
            )
        yield handled
        yield latency


def count(cell: list[float], seconds: float) -> None:
    """Add one handled message of `seconds` to a `BusHandlerMetrics` cell."""
    cell[0] += 1
    cell[1] += seconds
    cell[2 + bisect_left(HANDLER_LATENCY_BUCKETS, seconds)] += 1


BUS_HANDLERS = BusHandlerMetrics()
REGISTRY.register(BUS_HANDLERS)


def observe_http(method: str, route: str, status: int, seconds: float) -> None:
    """Count one answered request (bounded labels: methods and route templates, never raw paths)."""
    HTTP.observe(method, route, status, seconds)


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
_log = get_logger("shop.metrics")


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
