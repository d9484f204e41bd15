"""The bus's handler families (`shop_bus_messages_handled_total`, `shop_bus_handler_duration_seconds`)
are counted in plain per-thread cells (ADR 0027); a scrape must read exactly what a
prometheus_client Counter and Histogram fed the same messages would read, whichever threads
counted them."""

from __future__ import annotations

import threading
import uuid

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest

from shop.observability import metrics

from .scrape import samples


def test_a_scrape_reads_what_a_prometheus_counter_and_histogram_would_across_threads() -> None:
    consumer = f"test.{uuid.uuid4().hex}"  # labels no other test touches
    reference = CollectorRegistry()
    counter = Counter("shop_bus_messages_handled_total", "Messages handled", ["consumer", "type"],
                      registry=reference)  # fmt: skip
    histogram = Histogram("shop_bus_handler_duration_seconds", "Handler latency", ["consumer"],
                          buckets=metrics.HANDLER_LATENCY_BUCKETS, registry=reference)  # fmt: skip
    handled = [
        ("A", 0.0001),
        ("A", 0.001),  # on a bucket's bound: counted in that bucket
        ("B", 0.02),
        ("B", 9.0),  # past the last bound: only in +Inf
    ]

    def count(items: list[tuple[str, float]]) -> None:
        for message_type, seconds in items:
            metrics.BUS_HANDLERS.observe(consumer, message_type, seconds)

    count(handled[:2])
    other = threading.Thread(target=count, args=(handled[2:],))  # a second loop's thread
    other.start()
    other.join()
    for message_type, seconds in handled:
        counter.labels(consumer, message_type).inc()
        histogram.labels(consumer).observe(seconds)

    ours = samples(generate_latest(REGISTRY).decode(), "consumer", consumer)
    assert ours == samples(generate_latest(reference).decode(), "consumer", consumer)
    assert (
        REGISTRY.get_sample_value("shop_bus_messages_handled_total", {"consumer": consumer, "type": "B"}) == 2
    )
    assert REGISTRY.get_sample_value("shop_bus_handler_duration_seconds_count", {"consumer": consumer}) == 4


def test_the_families_have_their_created_series() -> None:
    consumer = f"test.{uuid.uuid4().hex}"
    metrics.BUS_HANDLERS.observe(consumer, "A", 0.01)
    assert REGISTRY.get_sample_value("shop_bus_messages_handled_created", {"consumer": consumer, "type": "A"})
    assert REGISTRY.get_sample_value("shop_bus_handler_duration_seconds_created", {"consumer": consumer})
