"""Hypothesis profiles for the property tests: `default` for `make test`, `deep` for
`make test-deep` (SHOP_PROPERTY_PROFILE=deep)."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

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
