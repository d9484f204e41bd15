"""Operators list, show and redrive dead letters over the API and the CLI."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import msgspec
import pytest
from litestar.testing import AsyncTestClient

from shop import cli
from shop.app import create_app
from shop.bus import inbox
from shop.bus.messages import decode_body, new_envelope
from shop.contracts.payments import TakePayment
from shop.contracts.users import RegisterUser
from shop.db import Database
from shop.settings import Settings

ADMIN = {"email": "ops@example.com", "password": "opspassword"}


def settings(tmp_path: Path) -> Settings:
    return Settings.from_env(
        {}, data_dir=tmp_path, admin_email=ADMIN["email"], admin_password=ADMIN["password"]
    )


async def admin_headers(client: AsyncTestClient) -> dict[str, str]:  # type: ignore[type-arg]
    token = (await client.post("/api/v1/auth/token", json=ADMIN)).json()["access_token"]
    return {"Authorization": f"Bearer {token}"}


def dead_registration(email: str) -> object:
    envelope = new_envelope(RegisterUser(email=email, password="longenough1", name="Dee"))
    return msgspec.structs.replace(envelope, consumer="users.register_user", attempt=5)


async def test_a_dead_letter_is_listed_shown_and_redriven_over_the_api(tmp_path: Path) -> None:
    app = create_app(settings(tmp_path))
    async with AsyncTestClient(app=app) as client:
        shop = app.state["shop"]
        entry_id = await inbox.bury(
            shop.databases["users"],
            "users",
            dead_registration("dee@example.com"),
            "Traceback\nRuntimeError: db down",
        )
        headers = await admin_headers(client)

        listing = await client.get("/api/v1/admin/dead-letters", headers=headers)
        assert listing.status_code == 200
        [item] = listing.json()["items"]
        assert item["id"] == str(entry_id)
        assert item["message_type"] == "RegisterUser"
        assert item["consumer"] == "users.register_user"
        assert item["attempts"] == 5
        assert item["error"] == "RuntimeError: db down"

        shown = await client.get(f"/api/v1/admin/dead-letters/{entry_id}", headers=headers)
        assert shown.status_code == 200
        assert shown.json()["envelope"]["body"]["email"] == "dee@example.com"

        redriven = await client.post(f"/api/v1/admin/dead-letters/{entry_id}/redrive", headers=headers)
        assert redriven.status_code == 202
        deadline = time.monotonic() + 5
        while True:
            login = await client.post(
                "/api/v1/auth/token", json={"email": "dee@example.com", "password": "longenough1"}
            )
            if login.status_code == 200 or time.monotonic() > deadline:
                break
        assert login.status_code == 200, "the redriven registration was handled"
        assert (await client.get("/api/v1/admin/dead-letters", headers=headers)).json()["items"] == []
        again = await client.post(f"/api/v1/admin/dead-letters/{entry_id}/redrive", headers=headers)
        assert again.status_code == 404


async def test_dead_letter_endpoints_are_for_admins_only(tmp_path: Path) -> None:
    app = create_app(settings(tmp_path))
    async with AsyncTestClient(app=app) as client:
        entry_id = await inbox.bury(
            app.state["shop"].databases["users"], "users", dead_registration("x@example.com"), "boom"
        )
        endpoints = [
            ("GET", "/api/v1/admin/dead-letters"),
            ("GET", f"/api/v1/admin/dead-letters/{entry_id}"),
            ("POST", f"/api/v1/admin/dead-letters/{entry_id}/redrive"),
        ]
        await client.post(
            "/api/v1/users", json={"email": "c@example.com", "password": "password12", "name": "C"}
        )
        token = (
            await client.post("/api/v1/auth/token", json={"email": "c@example.com", "password": "password12"})
        ).json()
        customer = {"Authorization": f"Bearer {token['access_token']}"}
        for method, path in endpoints:
            assert (await client.request(method, path)).status_code == 401, path
            assert (await client.request(method, path, headers=customer)).status_code == 403, path
        shown = await client.get(endpoints[1][1], headers=await admin_headers(client))
        assert shown.status_code == 200, "still there: nobody but an admin got to redrive it"
        unknown = "/api/v1/admin/dead-letters/00000000-0000-0000-0000-000000000000"
        assert (await client.get(unknown, headers=await admin_headers(client))).status_code == 404


def test_the_cli_lists_shows_and_redrives_dead_letters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SHOP_DATA_DIR", str(tmp_path))
    assert cli.main(["migrate"]) == 0

    async def bury() -> object:
        database = Database("users", Settings.from_env().database_url_for("users"))
        try:
            return await inbox.bury(database, "users", dead_registration("cli@example.com"), "boom")  # type: ignore[arg-type]
        finally:
            await database.dispose()

    entry_id = asyncio.run(bury())
    capsys.readouterr()

    assert cli.main(["dlq", "list", "users"]) == 0
    listed = [msgspec.json.decode(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["id"] for row in listed] == [str(entry_id)]

    assert cli.main(["dlq", "show", str(entry_id)]) == 0
    assert "cli@example.com" in capsys.readouterr().out

    assert cli.main(["dlq", "redrive", str(entry_id)]) == 0
    assert "redriven" in capsys.readouterr().out
    assert cli.main(["dlq", "redrive", str(entry_id)]) == 1

    async def delivered_by_the_running_shop() -> int:
        # the redriven envelope waits in the users outbox; a starting shop sweeps it
        app = create_app(Settings.from_env())
        async with AsyncTestClient(app=app) as client:
            deadline = time.monotonic() + 5
            while True:
                login = await client.post(
                    "/api/v1/auth/token", json={"email": "cli@example.com", "password": "longenough1"}
                )
                if login.status_code == 200 or time.monotonic() > deadline:
                    return login.status_code

    assert asyncio.run(delivered_by_the_running_shop()) == 200


def dead_payment(token: str) -> object:
    envelope = new_envelope(
        TakePayment(
            payment_id=uuid.uuid4(),
            order_id=uuid.uuid4(),
            customer_id=uuid.uuid4(),
            amount=1000,
            currency="EUR",
            payment_token=token,
        )
    )
    return msgspec.structs.replace(envelope, consumer="payments.take_payment", attempt=5)


async def test_dead_letters_are_paged_in_sql_across_modules_oldest_first(tmp_path: Path) -> None:
    app = create_app(settings(tmp_path))
    async with AsyncTestClient(app=app) as client:
        shop = app.state["shop"]
        buried = [
            await inbox.bury(
                shop.databases[module], module, dead_registration(f"p{n}@example.com"), f"Error: {n}"
            )  # type: ignore[arg-type]
            for n, module in enumerate(["users", "orders", "users", "payments", "orders"])
        ]
        headers = await admin_headers(client)

        seen: list[str] = []
        cursor: str | None = None
        pages = 0
        while True:
            params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
            page = (await client.get("/api/v1/admin/dead-letters", params=params, headers=headers)).json()
            pages += 1
            assert len(page["items"]) <= 2
            seen.extend(item["id"] for item in page["items"])
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == [str(entry) for entry in buried]
        assert pages == 3

        # each database is asked for no more than the page needs
        users = await inbox.list_dead(shop.databases["users"], limit=1)
        assert [e.id for e in users] == [buried[0]]
        after = (users[0].failed_at, users[0].id)
        assert [e.id for e in await inbox.list_dead(shop.databases["users"], limit=5, after=after)] == [
            buried[2]
        ]

        forged = await client.get("/api/v1/admin/dead-letters", params={"cursor": "abc"}, headers=headers)
        assert forged.status_code == 400


async def test_dead_letter_views_redact_the_payment_token_and_a_redrive_keeps_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = "tok_ok_very_secret_4242"
    app = create_app(settings(tmp_path))
    async with AsyncTestClient(app=app) as client:
        shop = app.state["shop"]
        entry_id = await inbox.bury(shop.databases["payments"], "payments", dead_payment(secret), "boom")  # type: ignore[arg-type]
        headers = await admin_headers(client)

        listing = await client.get("/api/v1/admin/dead-letters", headers=headers)
        shown = await client.get(f"/api/v1/admin/dead-letters/{entry_id}", headers=headers)

        assert secret not in listing.text
        assert secret not in shown.text
        assert shown.json()["envelope"]["body"]["payment_token"] == "[redacted]"
        assert shown.json()["envelope"]["body"]["amount"] == 1000
        stored = await inbox.get_dead(shop.databases["payments"], entry_id)
        assert stored is not None
        assert decode_body(stored.envelope.type, stored.envelope.body).payment_token == secret  # type: ignore[attr-defined]

    monkeypatch.setenv("SHOP_DATA_DIR", str(tmp_path))
    capsys.readouterr()
    assert await asyncio.to_thread(cli.main, ["dlq", "show", str(entry_id)]) == 0  # its own loop
    out = capsys.readouterr().out
    assert secret not in out
    assert "[redacted]" in out
