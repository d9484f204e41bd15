"""The shop's named loggers keep their bound structlog logger between calls, and still follow
every change of structlog's configuration: the level, the stream, a test's capture."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest
import structlog
from structlog.testing import capture_logs

from shop.observability import logging as shop_logging
from shop.observability.loggers import get_logger


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


def _events(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_a_logger_writes_to_the_stream_of_the_latest_configuration() -> None:
    log = get_logger("shop.test")
    first, second = io.StringIO(), io.StringIO()
    shop_logging.configure("INFO", stream=first)
    log.info("loggers.first", n=1)
    shop_logging.configure("INFO", stream=second)
    log.info("loggers.second", n=2)
    assert [e["event"] for e in _events(first)] == ["loggers.first"]
    assert [(e["event"], e["n"]) for e in _events(second)] == [("loggers.second", 2)]


def test_a_logger_follows_a_change_of_level() -> None:
    log = get_logger("shop.test")
    stream = io.StringIO()
    shop_logging.configure("INFO", stream=stream)
    log.debug("loggers.hidden")
    shop_logging.configure("DEBUG", stream=stream)
    log.debug("loggers.shown")
    assert [e["event"] for e in _events(stream)] == ["loggers.shown"]


def test_capture_logs_sees_the_lines_of_a_logger_used_before() -> None:
    log = get_logger("shop.test")
    shop_logging.configure("INFO", stream=io.StringIO())
    log.info("loggers.before")  # bound now, to the configured processors
    with capture_logs() as captured:
        log.warning("loggers.captured", reason="x")
    assert [(c["event"], c["reason"]) for c in captured] == [("loggers.captured", "x")]


def test_a_direct_structlog_configure_is_followed_too() -> None:
    log = get_logger("shop.test")
    shop_logging.configure("INFO", stream=io.StringIO())
    log.info("loggers.bound")
    stream = io.StringIO()
    structlog.configure(
        processors=[structlog.processors.JSONRenderer()],
        logger_factory=structlog.WriteLoggerFactory(file=stream),
    )
    log.error("loggers.elsewhere", code=7)
    assert _events(stream) == [{"event": "loggers.elsewhere", "code": 7}]
