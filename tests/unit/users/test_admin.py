"""Admins: from SHOP_ADMIN_EMAIL/SHOP_ADMIN_PASSWORD at start-up, from `shop admin create`,
and what the admin role opens (GET /api/v1/services)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import jwt
import pytest

from shop.cli import main
from shop.settings import MODULE_NAMES

ADMIN_EMAIL = "boss@example.com"
ADMIN_PASSWORD = "admin-password-1"


def _users_with_email(data_dir: Path, email: str) -> list[tuple[str, str]]:
    with sqlite3.connect(data_dir / "users.db") as db:
        return db.execute("SELECT email, role FROM users WHERE lower(email) = ?", (email.lower(),)).fetchall()


def _clear_shop_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("SHOP_"):
            monkeypatch.delenv(name)


async def test_the_admin_from_the_settings_is_created_at_start_up_with_the_admin_role(open_shop: Any) -> None:
    async with open_shop(admin_email=ADMIN_EMAIL, admin_password=ADMIN_PASSWORD) as api:
        token = await api.login(ADMIN_EMAIL, ADMIN_PASSWORD)

        assert jwt.decode(token, options={"verify_signature": False})["role"] == "admin"
        me = await api.client.get("/api/v1/users/me", headers=api.bearer(token))
        assert me.json()["role"] == "admin"
        assert me.json()["email"] == ADMIN_EMAIL


async def test_the_admin_email_from_the_settings_is_normalised_like_any_email(open_shop: Any) -> None:
    async with open_shop(admin_email="Boss@Example.COM", admin_password=ADMIN_PASSWORD) as api:
        token = await api.login(ADMIN_EMAIL, ADMIN_PASSWORD)

        assert jwt.decode(token, options={"verify_signature": False})["role"] == "admin"


async def test_restarting_with_the_admin_settings_neither_fails_nor_duplicates_the_admin(
    open_shop: Any,
) -> None:
    async with open_shop(admin_email=ADMIN_EMAIL, admin_password=ADMIN_PASSWORD) as first:
        admin_id = (
            await first.client.get(
                "/api/v1/users/me", headers=first.bearer(await first.login(ADMIN_EMAIL, ADMIN_PASSWORD))
            )
        ).json()["id"]

    async with open_shop(admin_email=ADMIN_EMAIL, admin_password=ADMIN_PASSWORD) as second:
        token = await second.login(ADMIN_EMAIL, ADMIN_PASSWORD)
        me = await second.client.get("/api/v1/users/me", headers=second.bearer(token))
        assert me.json()["id"] == admin_id
        assert me.json()["role"] == "admin"

    assert _users_with_email(second.data_dir, ADMIN_EMAIL) == [(ADMIN_EMAIL, "admin")]


async def test_without_admin_settings_nobody_is_an_admin(open_shop: Any) -> None:
    async with open_shop() as api:
        response = await api.client.post(
            "/api/v1/auth/token", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
        )

        api.problem(response, 401)


async def test_services_is_401_without_a_token_and_403_for_a_customer(open_shop: Any) -> None:
    async with open_shop() as api:
        _, customer = await api.customer()

        api.problem(await api.client.get("/api/v1/services"), 401)
        api.problem(await api.client.get("/api/v1/services", headers=customer), 403)


async def test_services_shows_the_admin_every_module_as_one_local_instance_and_the_breakers(
    open_shop: Any,
) -> None:
    async with open_shop(admin_email=ADMIN_EMAIL, admin_password=ADMIN_PASSWORD) as api:
        headers = api.bearer(await api.login(ADMIN_EMAIL, ADMIN_PASSWORD))

        response = await api.client.get("/api/v1/services", headers=headers)

        assert response.status_code == 200
        body = response.json()
        assert set(body) == {"modules", "breakers"}
        assert set(body["modules"]) == set(MODULE_NAMES)
        for instances in body["modules"].values():
            assert len(instances) == 1
            assert {"instance_id", "url", "healthy", "last_seen"} <= instances[0].keys()
            assert instances[0]["healthy"] is True
        assert isinstance(body["breakers"], dict)
        assert set(body["breakers"].values()) <= {"CLOSED", "OPEN", "HALF_OPEN"}
        # the login above went through the users module's breaker
        assert body["breakers"].get("module:users:queries") == "CLOSED"


def _log_in_on_an_app(data_dir: Path, email: str, password: str) -> tuple[int, str | None]:
    """Start an app on the data dir (own event loop: this test is synchronous), log in."""
    from litestar.testing import AsyncTestClient

    from shop.app import create_app
    from shop.settings import Settings

    async def run() -> tuple[int, str | None]:
        app = create_app(Settings.from_env({}, data_dir=data_dir))
        async with AsyncTestClient(app=app) as client:
            response = await client.post("/api/v1/auth/token", json={"email": email, "password": password})
            if response.status_code != 200:
                return response.status_code, None
            token = response.json()["access_token"]
            me = await client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {token}"})
            return response.status_code, me.json()["role"]

    return asyncio.run(run())


def test_cli_admin_create_makes_an_admin_who_can_log_in_and_a_second_run_exits_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _clear_shop_env(monkeypatch)
    data_dir = tmp_path / "data"
    monkeypatch.setenv("SHOP_DATA_DIR", str(data_dir))

    assert main(["admin", "create", "--email", "Root@Example.com", "--password", ADMIN_PASSWORD]) == 0
    assert _log_in_on_an_app(data_dir, "root@example.com", ADMIN_PASSWORD) == (200, "admin")

    assert main(["admin", "create", "--email", "root@example.com", "--password", "another-password"]) == 1
    assert _users_with_email(data_dir, "root@example.com") == [("root@example.com", "admin")]
    # the first password is still the one that works
    assert _log_in_on_an_app(data_dir, "root@example.com", "another-password") == (401, None)


def test_cli_admin_create_prints_the_new_admin_as_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _clear_shop_env(monkeypatch)
    monkeypatch.setenv("SHOP_DATA_DIR", str(tmp_path / "data"))

    assert main(["admin", "create", "--email", "root@example.com", "--password", ADMIN_PASSWORD]) == 0

    out = capsys.readouterr().out.strip().splitlines()
    created = json.loads(out[-1])
    assert created["email"] == "root@example.com"
    assert created["role"] == "admin"
    assert ADMIN_PASSWORD not in "\n".join(out)


def test_cli_admin_create_refuses_a_short_password_with_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _clear_shop_env(monkeypatch)
    monkeypatch.setenv("SHOP_DATA_DIR", str(tmp_path / "data"))

    assert main(["admin", "create", "--email", "root@example.com", "--password", "short"]) == 2

    assert "--password" in capsys.readouterr().err
