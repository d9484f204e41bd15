"""The Prometheus metric families of every Shop process; names and labels are stable."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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
