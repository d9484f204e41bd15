"""The HTTP families (`shop_http_requests_total`, `shop_http_request_duration_seconds`) are
counted without prometheus_client's per-request locks; a scrape must read exactly what a
prometheus_client Counter and Histogram fed the same requests would read."""

from __future__ import annotations

import uuid

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest

from shop.observability import metrics

from .scrape import samples


def test_a_scrape_reads_what_a_prometheus_counter_and_histogram_would() -> None:
    route = f"/api/v1/test/{uuid.uuid4().hex}"  # labels no other test touches
    reference = CollectorRegistry()
    counter = Counter("shop_http_requests_total", "HTTP requests answered", ["method", "route", "status"],
                      registry=reference)  # fmt: skip
    histogram = Histogram("shop_http_request_duration_seconds", "HTTP request latency", ["method", "route"],
                          buckets=metrics.HTTP_LATENCY_BUCKETS, registry=reference)  # fmt: skip
    answered = [
        ("GET", 200, 0.0004),
        ("GET", 200, 0.001),  # on a bucket's bound: counted in that bucket
        ("GET", 404, 0.003),
        ("POST", 201, 0.3),
        ("POST", 201, 9.5),  # past the last bound: only in +Inf
        ("OTHER", 405, 0.0),
    ]

    for method, status, seconds in answered:
        metrics.observe_http(method, route, status, seconds)
        counter.labels(method, route, str(status)).inc()
        histogram.labels(method, route).observe(seconds)

    ours = samples(generate_latest(REGISTRY).decode(), "route", route)
    assert ours == samples(generate_latest(reference).decode(), "route", route)
    assert (
        ours[
            ("shop_http_requests_total", frozenset({("method", "GET"), ("route", route), ("status", "200")}))
        ]
        == 2
    )
    le_1ms = frozenset({("method", "GET"), ("route", route), ("le", "0.001")})
    assert ours[("shop_http_request_duration_seconds_bucket", le_1ms)] == 2


def test_a_family_reads_with_its_created_series_like_prometheus_client_gives() -> None:
    route = f"/api/v1/test/{uuid.uuid4().hex}"
    metrics.observe_http("GET", route, 200, 0.01)

    labels = {"method": "GET", "route": route}
    assert REGISTRY.get_sample_value("shop_http_requests_total", {**labels, "status": "200"}) == 1
    assert REGISTRY.get_sample_value("shop_http_request_duration_seconds_count", labels) == 1
    assert REGISTRY.get_sample_value("shop_http_requests_created", {**labels, "status": "200"})
    assert REGISTRY.get_sample_value("shop_http_request_duration_seconds_created", labels)
