"""Logins and sign-ups against abuse: limits per client address and per email from that address
(a stranger cannot lock an owner out from elsewhere, unknown emails do not escape), and argon2
bounded on its own executor, never while holding a database connection."""

from __future__ import annotations

import asyncio
import threading
import uuid
from typing import Any

from argon2 import PasswordHasher

from shop.modules.users.passwords import HASHING_THREADS
from shop.settings import RateLimit

from .conftest import PASSWORD

TOKEN = "/api/v1/auth/token"


def _from(address: str) -> dict[str, str]:
    return {"X-Forwarded-For": f"192.0.2.1, {address}"}  # the gateway appended the last entry


async def test_a_stranger_exhausting_an_emails_limit_does_not_lock_its_owner_out(open_shop: Any) -> None:
    async with open_shop(behind_gateway=True, login_rate_limit=RateLimit(3, 60)) as api:
        await api.sign_up("owner@example.com")
        stranger = _from("203.0.113.9")
        for _ in range(3):
            wrong = await api.client.post(
                TOKEN, json={"email": "owner@example.com", "password": "guess-guess"}, headers=stranger
            )
            assert wrong.status_code == 401
        limited = await api.client.post(
            TOKEN, json={"email": "owner@example.com", "password": PASSWORD}, headers=stranger
        )
        assert limited.status_code == 429
        assert int(limited.headers["retry-after"]) >= 1

        owner = await api.client.post(
            TOKEN, json={"email": "owner@example.com", "password": PASSWORD}, headers=_from("198.51.100.7")
        )
        assert owner.status_code == 200, owner.text


async def test_unknown_emails_from_one_address_are_limited_by_that_address(open_shop: Any) -> None:
    async with open_shop(behind_gateway=True, auth_address_rate_limit=RateLimit(5, 60)) as api:
        spray = _from("203.0.113.9")
        statuses = [
            (
                await api.client.post(
                    TOKEN, json={"email": f"nobody-{n}@example.com", "password": "guess-guess"}, headers=spray
                )
            ).status_code
            for n in range(7)
        ]
        assert statuses == [401] * 5 + [429] * 2

        elsewhere = await api.client.post(
            TOKEN,
            json={"email": "nobody-0@example.com", "password": "guess-guess"},
            headers=_from("198.51.100.7"),
        )
        assert elsewhere.status_code == 401


async def test_one_unknown_email_is_limited_per_email_too(open_shop: Any) -> None:
    async with open_shop(behind_gateway=True, login_rate_limit=RateLimit(2, 60)) as api:
        statuses = [
            (
                await api.client.post(
                    TOKEN,
                    json={"email": "ghost@example.com", "password": "guess-guess"},
                    headers=_from("203.0.113.9"),
                )
            ).status_code
            for _ in range(3)
        ]
        assert statuses == [401, 401, 429]


async def test_sign_ups_are_limited_per_address(open_shop: Any) -> None:
    async with open_shop(behind_gateway=True, auth_address_rate_limit=RateLimit(3, 60)) as api:

        async def sign_up(address: str) -> int:
            response = await api.client.post(
                "/api/v1/users",
                json={"email": f"new-{uuid.uuid4().hex[:8]}@example.com", "password": PASSWORD, "name": "N"},
                headers=_from(address),
            )
            return response.status_code

        assert [await sign_up("203.0.113.9") for _ in range(4)] == [201, 201, 201, 429]
        assert await sign_up("198.51.100.7") == 201


async def test_a_client_cannot_dodge_the_address_limit_with_a_forwarded_for_header(open_shop: Any) -> None:
    # `shop run` faces clients itself: the peer address counts, X-Forwarded-For is the client's claim.
    async with open_shop(auth_address_rate_limit=RateLimit(2, 60)) as api:
        statuses = [
            (
                await api.client.post(
                    TOKEN,
                    json={"email": f"nobody-{n}@example.com", "password": "guess-guess"},
                    headers={"X-Forwarded-For": f"10.0.0.{n}"},
                )
            ).status_code
            for n in range(3)
        ]
        assert statuses == [401, 401, 429]


async def test_logins_hash_on_a_bounded_executor_holding_no_database_connection(
    open_shop: Any, monkeypatch: Any
) -> None:
    seen: dict[str, Any] = {
        "running": 0,
        "most": 0,
        "threads": set(),
        "connections": [],
        "write_slot_taken": [],
    }
    lock = threading.Lock()
    original = PasswordHasher.verify

    def watched_verify(self: PasswordHasher, hash: str, password: str) -> Any:
        with lock:
            seen["running"] += 1
            seen["most"] = max(seen["most"], seen["running"])
            seen["threads"].add(threading.current_thread().name)
            # connections checked out beyond the ones the process keeps for all its readers and
            # writers (shop.db), and whether a writer holds the database's write slot
            seen["connections"].append(users_pool.checkedout() - users_db.kept_connections)
            seen["write_slot_taken"].append(users_db.write_lock is not None and users_db.write_lock.locked())
        try:
            return original(self, hash, password)
        finally:
            with lock:
                seen["running"] -= 1

    async with open_shop(
        behind_gateway=True, login_rate_limit=RateLimit(1000, 60), auth_address_rate_limit=RateLimit(1000, 60)
    ) as api:
        await api.sign_up("ada@example.com")
        users_db = api.shop.databases["users"]
        users_pool = users_db.engine.sync_engine.pool
        monkeypatch.setattr(PasswordHasher, "verify", watched_verify)

        async def login(n: int) -> int:
            email = "ada@example.com" if n % 2 else f"nobody-{n}@example.com"
            response = await api.client.post(
                TOKEN, json={"email": email, "password": PASSWORD}, headers=_from(f"203.0.113.{n}")
            )
            return response.status_code

        statuses = await asyncio.gather(*(login(n) for n in range(12)))

    assert sorted(set(statuses)) == [200, 401]
    assert 1 <= seen["most"] <= HASHING_THREADS, seen
    assert all(name.startswith("argon2") for name in seen["threads"]), seen["threads"]
    assert set(seen["connections"]) == {0}, "a login held a users database connection while hashing"
    assert not any(seen["write_slot_taken"]), "a login held the users database's write slot while hashing"
