"""The context an envelope carries, for relaying it and for handling it."""

from __future__ import annotations

import uuid

from shop.bus import context
from shop.bus.messages import Rejected, new_envelope


def test_relaying_keeps_the_context_it_was_sent_in_and_handling_makes_it_the_cause() -> None:
    cause, correlation = uuid.uuid4(), uuid.uuid4()
    envelope = new_envelope(
        Rejected(code="X"), correlation_id=correlation, causation_id=cause, request_id="req-1"
    )

    sent = context.of_envelope(envelope, handling=False)
    handled = context.of_envelope(envelope, handling=True)

    assert (sent.correlation_id, sent.causation_id, sent.request_id) == (correlation, cause, "req-1")
    assert (handled.correlation_id, handled.causation_id) == (correlation, envelope.message_id)
    assert sent.traceparent == handled.traceparent == envelope.traceparent


def test_handling_a_message_without_a_request_keeps_the_current_request_in_the_logs() -> None:
    envelope = new_envelope(Rejected(code="X"))
    token = context.enter(context.MessageContext(request_id="outer"))
    try:
        assert context.of_envelope(envelope, handling=True).request_id == "outer"
        assert context.of_envelope(envelope, handling=False).request_id is None
    finally:
        context.leave(token)
