"""Hypothesis profiles for the property tests: `default` for `make test`, `deep` for
`make test-deep` (SHOP_PROPERTY_PROFILE=deep)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest
import structlog
from hypothesis import HealthCheck, settings

from shop.observability.logging import configure as configure_logging

settings.register_profile(
    "default",
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "deep",
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PROFILE = os.environ.get("SHOP_PROPERTY_PROFILE", "default")
if PROFILE not in ("default", "deep"):
    raise ValueError(f"SHOP_PROPERTY_PROFILE must be 'default' or 'deep', not {PROFILE!r}")
settings.load_profile(PROFILE)


@pytest.fixture(autouse=True)
def quiet_logs() -> Iterator[None]:
    """Thousands of programs log nothing below CRITICAL; the logging set-up other tests rely on
    is put back afterwards."""
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    shop_level = logging.getLogger("shop").level
    configure_logging("CRITICAL")
    try:
        yield
    finally:
        structlog.configure(**saved)
        root.handlers[:] = handlers
        root.setLevel(level)
        logging.getLogger("shop").setLevel(shop_level)
