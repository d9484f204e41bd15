"""One order through the split deployment is one trace: every process (the gateway and the five
services) exports its spans over OTLP/HTTP to a small receiver in this test, and the order's
spans share one trace id and form one tree under the gateway's server span."""

from __future__ import annotations

import gzip
import http.server
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from .test_split_deployment import (  # noqa: F401 - split_backend, split_env, split and journey are fixtures
    Deployment,
    Journey,
    free_port,
    journey,
    split,
    split_backend,
    split_env,
)

pytestmark = pytest.mark.e2e
SERVICES = {"shop-gateway", "shop-orders", "shop-catalog", "shop-users", "shop-payments", "shop-delivery"}
SERVER, CLIENT, PRODUCER, CONSUMER = 2, 3, 4, 5  # opentelemetry.proto.trace.v1.Span.SpanKind
# Bus hops of the order that cross processes: (producer's service, consumer's service, consumer span)
HOPS = {
    ("shop-orders", "shop-catalog", "handle catalog.ReserveStock.v1"),
    ("shop-orders", "shop-users", "handle users.GetAddress.v1"),
    ("shop-orders", "shop-payments", "handle payments.TakePayment.v1"),
    ("shop-payments", "shop-orders", "handle payments.PaymentCaptured.v1"),
    ("shop-orders", "shop-catalog", "handle catalog.CommitStock.v1"),  # the saga's last step
}


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    kind: int


@dataclass
class Receiver:
    """An OTLP/HTTP traces endpoint on 127.0.0.1: keeps every span it is sent."""

    url: str = ""
    spans: list[ReceivedSpan] = field(default_factory=list)
    requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, body: bytes) -> None:
        request = ExportTraceServiceRequest.FromString(body)
        received = []
        for resource_spans in request.resource_spans:
            attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            service = attributes.get("service.name", "?")
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received.append(
                        ReceivedSpan(
                            service,
                            span.trace_id.hex(),
                            span.span_id.hex(),
                            span.parent_span_id.hex(),
                            span.name,
                            span.kind,
                        )
                    )
        with self.lock:
            self.spans.extend(received)
            self.requests += 1

    def snapshot(self) -> list[ReceivedSpan]:
        with self.lock:
            return list(self.spans)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            if self.headers.get("content-encoding") == "gzip":
                body = gzip.decompress(body)
            if self.path != "/v1/traces":
                self.send_error(404)
                return
            found.take(body)
            answer = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    found.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="otlp-receiver", daemon=True)
    thread.start()
    try:
        yield found
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture(autouse=True)
def _exported_to_the_receiver(receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every process of the deployment (its environment is this one's, taken by the `split`
    fixture after this one ran) exports to the receiver, in batches 100 ms apart."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)


def tree_problems(spans: list[ReceivedSpan]) -> list[str]:
    """Why `spans` (one trace) are not (yet) one tree under the gateway's server span with every
    service's spans and the order's hops between processes. Spans arrive in batches per process,
    so a complete trace is waited for, not expected at once."""
    ids = {s.span_id for s in spans}
    roots = [s for s in spans if s.parent_id not in ids]
    problems = []
    if len(roots) != 1:
        problems.append(f"{len(roots)} roots: {[(r.service, r.name, r.parent_id) for r in roots]}")
    elif (roots[0].service, roots[0].kind, roots[0].parent_id) != ("shop-gateway", SERVER, ""):
        problems.append(f"the root is not the gateway's server span: {roots[0]}")
    missing = SERVICES - {s.service for s in spans}
    if missing:
        problems.append(f"no span from {sorted(missing)}")
    if not problems:
        by_id = {s.span_id: s for s in spans}
        crossed = {
            (by_id[s.parent_id].service, s.service, s.name)
            for s in spans
            if s.kind == CONSUMER and by_id[s.parent_id].service != s.service
        }
        if HOPS - crossed:
            problems.append(f"hops not seen (yet): {sorted(HOPS - crossed)}")
        if not any(consumer == "shop-delivery" for _, consumer, _ in crossed):
            problems.append("no delivery consumer span (yet)")
    return problems


@pytest.mark.timeout(300)
def test_one_order_is_one_trace_across_the_gateway_and_every_service(
    split: Deployment,  # noqa: F811 - the fixture imported above
    journey: Journey,  # noqa: F811
    receiver: Receiver,
) -> None:
    customer = journey.customer()
    address = journey.address(customer)
    product = journey.product(stock=3)
    order_id = journey.place(customer, product, 1, address)
    assert journey.settle(customer, order_id)["status"] == "COMPLETED"

    def placed() -> ReceivedSpan | None:
        return next(
            (
                s
                for s in receiver.snapshot()
                if (s.service, s.kind, s.name) == ("shop-gateway", SERVER, "POST /api/v1/orders")
            ),
            None,
        )

    deadline = time.monotonic() + 60
    root = order_spans = None
    problems = ["no span yet"]
    while time.monotonic() < deadline:
        root = placed()
        if root is not None:
            order_spans = [s for s in receiver.snapshot() if s.trace_id == root.trace_id]
            problems = tree_problems(order_spans)
            if not problems:
                break
        time.sleep(0.2)
    assert not problems, f"{problems}; {receiver.requests} export requests received"
    assert root is not None
    assert order_spans is not None

    by_id = {s.span_id: s for s in order_spans}
    # the gateway's client span is the parent of the orders service's server span
    orders_server = [s for s in order_spans if (s.service, s.kind) == ("shop-orders", SERVER)]
    assert [by_id[s.parent_id].service for s in orders_server] == ["shop-gateway"]
    assert by_id[orders_server[0].parent_id].kind == CLIENT
    # every consumer span hangs under a producer span (of another process or its own)
    consumers = [s for s in order_spans if s.kind == CONSUMER]
    assert consumers
    assert all(by_id[s.parent_id].kind == PRODUCER for s in consumers)
