"""Admins: from SHOP_ADMIN_EMAIL/SHOP_ADMIN_PASSWORD at start-up (created, or its password
rotated), from `shop admin create` (the password from stdin, the environment or a prompt, never
from argv), and what the admin role opens (GET /api/v1/services)."""

from __future__ import annotations

import asyncio
import io
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


async def test_a_new_admin_password_in_the_settings_replaces_the_old_one_at_start_up(open_shop: Any) -> None:
    async with open_shop(admin_email=ADMIN_EMAIL, admin_password=ADMIN_PASSWORD) as first:
        await first.login(ADMIN_EMAIL, ADMIN_PASSWORD)

    async with open_shop(admin_email=ADMIN_EMAIL, admin_password="rotated-password-2") as second:
        token = await second.login(ADMIN_EMAIL, "rotated-password-2")
        assert jwt.decode(token, options={"verify_signature": False})["role"] == "admin"
        old = await second.client.post(
            "/api/v1/auth/token", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
        )
        second.problem(old, 401)

    assert _users_with_email(second.data_dir, ADMIN_EMAIL) == [(ADMIN_EMAIL, "admin")]


async def test_a_password_changed_by_hand_is_set_back_to_the_configured_one_at_start_up(
    open_shop: Any,
) -> None:
    async with open_shop(admin_email=ADMIN_EMAIL, admin_password=ADMIN_PASSWORD) as first:
        pass
    with sqlite3.connect(first.data_dir / "users.db") as db:
        db.execute("UPDATE users SET password_hash = 'not-a-hash' WHERE email = ?", (ADMIN_EMAIL,))

    async with open_shop(admin_email=ADMIN_EMAIL, admin_password=ADMIN_PASSWORD) as second:
        await second.login(ADMIN_EMAIL, ADMIN_PASSWORD)


async def test_a_customer_holding_the_admin_email_is_neither_promoted_nor_given_the_admin_password(
    open_shop: Any,
) -> None:
    async with open_shop() as first:
        await first.sign_up(ADMIN_EMAIL, password="the-customers-own")

    async with open_shop(admin_email=ADMIN_EMAIL, admin_password=ADMIN_PASSWORD) as second:
        token = await second.login(ADMIN_EMAIL, "the-customers-own")
        assert jwt.decode(token, options={"verify_signature": False})["role"] == "customer"
        refused = await second.client.post(
            "/api/v1/auth/token", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
        )
        second.problem(refused, 401)


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


class _Terminal(io.StringIO):
    """Standard input that is a terminal (the prompt is only offered on one)."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    _clear_shop_env(monkeypatch)
    path = tmp_path / "data"
    monkeypatch.setenv("SHOP_DATA_DIR", str(path))
    return path


def test_cli_admin_create_reads_the_password_from_stdin_and_a_second_run_exits_1(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(ADMIN_PASSWORD + "\n"))
    assert main(["admin", "create", "--email", "Root@Example.com", "--password-stdin"]) == 0
    assert _log_in_on_an_app(data_dir, "root@example.com", ADMIN_PASSWORD) == (200, "admin")

    monkeypatch.setattr("sys.stdin", io.StringIO("another-password\n"))
    capsys.readouterr()
    assert main(["admin", "create", "--email", "root@example.com", "--password-stdin"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("shop: root@example.com: "), err
    assert err.count("\n") == 1, err
    assert _users_with_email(data_dir, "root@example.com") == [("root@example.com", "admin")]
    # the first password is still the one that works
    assert _log_in_on_an_app(data_dir, "root@example.com", "another-password") == (401, None)


def test_cli_admin_create_prints_the_new_admin_as_json_and_never_the_password(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(ADMIN_PASSWORD + "\n"))
    assert main(["admin", "create", "--email", "root@example.com", "--password-stdin"]) == 0

    captured = capsys.readouterr()
    created = json.loads(captured.out.strip().splitlines()[-1])
    assert created["email"] == "root@example.com"
    assert created["role"] == "admin"
    assert ADMIN_PASSWORD not in captured.out + captured.err


def test_cli_admin_create_takes_the_password_and_email_from_the_environment(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHOP_ADMIN_EMAIL", "Env@Example.com")
    monkeypatch.setenv("SHOP_ADMIN_PASSWORD", ADMIN_PASSWORD)
    monkeypatch.setattr("sys.stdin", io.StringIO(""))

    assert main(["admin", "create"]) == 0

    assert _log_in_on_an_app(data_dir, "env@example.com", ADMIN_PASSWORD) == (200, "admin")


def test_cli_admin_create_asks_twice_at_the_terminal(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    prompts: list[str] = []

    def typed(prompt: str) -> str:
        prompts.append(prompt)
        return ADMIN_PASSWORD

    monkeypatch.setattr("getpass.getpass", typed)
    monkeypatch.setattr("sys.stdin", _Terminal())

    assert main(["admin", "create", "--email", "tty@example.com"]) == 0

    assert len(prompts) == 2
    assert _log_in_on_an_app(data_dir, "tty@example.com", ADMIN_PASSWORD) == (200, "admin")


def test_cli_admin_create_refuses_two_different_passwords_at_the_terminal(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    answers = iter([ADMIN_PASSWORD, ADMIN_PASSWORD + "x"])
    monkeypatch.setattr("getpass.getpass", lambda _prompt: next(answers))
    monkeypatch.setattr("sys.stdin", _Terminal())

    assert main(["admin", "create", "--email", "tty@example.com"]) == 2

    assert capsys.readouterr().err == "shop: the two passwords differ; nothing was created\n"
    assert not (data_dir / "users.db").exists()


def test_cli_admin_create_without_any_password_source_exits_2_without_prompting(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def no_prompt(_prompt: str) -> str:
        raise AssertionError("prompted although standard input is not a terminal")

    monkeypatch.setattr("getpass.getpass", no_prompt)
    monkeypatch.setattr("sys.stdin", io.StringIO(ADMIN_PASSWORD + "\n"))

    assert main(["admin", "create", "--email", "root@example.com"]) == 2

    err = capsys.readouterr().err
    assert "--password-stdin" in err
    assert "SHOP_ADMIN_PASSWORD" in err


def test_cli_admin_create_has_no_password_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["admin", "create", "--email", "root@example.com", "--password", ADMIN_PASSWORD])

    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "--password is not accepted" in err
    assert ADMIN_PASSWORD not in err


@pytest.mark.parametrize(
    ("stdin", "message"),
    [
        ("short\n", "the password on standard input must be at least 8 characters"),
        ("\n", "--password-stdin: standard input holds no password"),
    ],
)
def test_cli_admin_create_refuses_a_short_or_missing_password_on_stdin_with_exit_2(
    data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    stdin: str,
    message: str,
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))

    assert main(["admin", "create", "--email", "root@example.com", "--password-stdin"]) == 2

    assert capsys.readouterr().err == f"shop: {message}\n"
