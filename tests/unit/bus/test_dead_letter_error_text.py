"""A dead letter keeps the end of a long traceback: the exception that failed the message."""

from __future__ import annotations

from shop.bus.inbox import ERROR_LIMIT, _bounded


def test_a_long_traceback_keeps_its_first_frames_and_its_final_exception() -> None:
    text = "Traceback (most recent call last):\n" + "  frame\n" * 2000 + "PaymentOutcomeUnknown: boom"
    kept = _bounded(text)
    assert len(kept) <= ERROR_LIMIT
    assert kept.startswith("Traceback (most recent call last):")
    assert kept.endswith("PaymentOutcomeUnknown: boom")


def test_a_short_traceback_is_kept_whole() -> None:
    assert _bounded("ValueError: short") == "ValueError: short"
