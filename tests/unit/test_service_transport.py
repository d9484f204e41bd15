"""`shop serve` takes its bus transport from the settings (SHOP_TRANSPORT), dramatiq by default."""

from __future__ import annotations

from pathlib import Path

import pytest

from shop.app import create_service_app
from shop.security.keys import load_keys
from shop.settings import Settings


@pytest.mark.parametrize(
    ("configured", "used"), [(None, "dramatiq"), ("dramatiq", "dramatiq"), ("inprocess", "inprocess")]
)
def test_a_service_uses_the_configured_transport(
    configured: str | None, used: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SHOP_TRANSPORT", raising=False)
    settings = Settings(data_dir=tmp_path, redis_url="redis://127.0.0.1:1/0", transport=configured)
    load_keys(settings, generate=True)  # the dev key pair a service verifies tokens with

    app = create_service_app(settings, ["catalog"])  # nothing connects before it starts

    assert app.state["shop"].bus.transport.name == used


def test_shop_transport_is_read_into_the_settings() -> None:
    assert Settings.from_env({"SHOP_TRANSPORT": "inprocess"}).service_transport == "inprocess"
    assert Settings.from_env({}).service_transport == "dramatiq"
