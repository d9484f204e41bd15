"""POST /api/v1/users: sign-up, its validation and its conflicts."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

PASSWORD = "correct horse battery"


async def test_sign_up_is_201_with_id_email_name_and_the_customer_role(open_shop: Any) -> None:
    async with open_shop() as api:
        response = await api.client.post(
            "/api/v1/users", json={"email": "ada@example.com", "password": PASSWORD, "name": "Ada"}
        )

        assert response.status_code == 201
        assert response.headers["content-type"].startswith("application/json")
        body = response.json()
        assert set(body) == {"id", "email", "name", "role"}
        assert uuid.UUID(body["id"])
        assert body == {"id": body["id"], "email": "ada@example.com", "name": "Ada", "role": "customer"}
        assert PASSWORD not in response.text


async def test_sign_up_stores_the_email_in_lower_case_and_the_name_trimmed(open_shop: Any) -> None:
    async with open_shop() as api:
        body = await api.sign_up("Grace.Hopper@Example.COM", name="  Grace  ")

        assert body["email"] == "grace.hopper@example.com"
        assert body["name"] == "Grace"


async def test_a_role_sent_on_sign_up_is_ignored_so_nobody_promotes_themselves(open_shop: Any) -> None:
    async with open_shop() as api:
        body = await api.sign_up("mallory@example.com", role="admin")
        assert body["role"] == "customer"

        headers = api.bearer(await api.login("mallory@example.com"))
        me = await api.client.get("/api/v1/users/me", headers=headers)
        assert me.json()["role"] == "customer"
        api.problem(await api.client.get("/api/v1/services", headers=headers), 403)


async def test_signup_with_a_taken_email_is_409_and_keeps_the_first_account(open_shop: Any) -> None:
    async with open_shop() as api:
        first = await api.sign_up("taken@example.com", password="first-password", name="First")

        again = await api.client.post(
            "/api/v1/users",
            json={"email": "taken@example.com", "password": "second-password", "name": "Second"},
        )
        body = api.problem(again, 409)
        assert "second-password" not in again.text

        # nothing lost, nothing overwritten: the first password still works, the second does not
        token = await api.login("taken@example.com", "first-password")
        me = await api.client.get("/api/v1/users/me", headers=api.bearer(token))
        assert me.json() == first
        wrong = await api.client.post(
            "/api/v1/auth/token", json={"email": "taken@example.com", "password": "second-password"}
        )
        api.problem(wrong, 401)
        assert body["title"]


async def test_signup_with_an_email_differing_only_in_case_is_409(open_shop: Any) -> None:
    async with open_shop() as api:
        first = await api.sign_up("case@example.com", password="first-password")

        again = await api.client.post(
            "/api/v1/users", json={"email": "CASE@Example.Com", "password": "other-password", "name": "X"}
        )

        api.problem(again, 409)
        token = await api.login("case@example.com", "first-password")
        me = await api.client.get("/api/v1/users/me", headers=api.bearer(token))
        assert me.json()["id"] == first["id"]


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        pytest.param(
            {"email": "a@example.com", "password": "short", "name": "A"}, "password", id="short-password"
        ),
        pytest.param(
            {"email": "a@example.com", "password": "1234567", "name": "A"}, "password", id="7-chars"
        ),
        pytest.param({"password": PASSWORD, "name": "A"}, "email", id="missing-email"),
        pytest.param({"email": "a@example.com", "name": "A"}, "password", id="missing-password"),
        pytest.param({"email": "a@example.com", "password": PASSWORD}, "name", id="missing-name"),
        pytest.param({"email": "not-an-email", "password": PASSWORD, "name": "A"}, "email", id="no-at-sign"),
        pytest.param({"email": "a@", "password": PASSWORD, "name": "A"}, "email", id="no-domain"),
        pytest.param({"email": "a b@example.com", "password": PASSWORD, "name": "A"}, "email", id="space"),
        pytest.param({"email": 42, "password": PASSWORD, "name": "A"}, "email", id="email-int"),
        pytest.param({"email": "a@example.com", "password": 12345678, "name": "A"}, "password", id="pw-int"),
        pytest.param({"email": "a@example.com", "password": PASSWORD, "name": ["A"]}, "name", id="name-list"),
        pytest.param({"email": "a@example.com", "password": PASSWORD, "name": None}, "name", id="name-null"),
        pytest.param({"email": "a@example.com", "password": PASSWORD, "name": ""}, "name", id="name-empty"),
        pytest.param(
            {"email": "a@example.com", "password": PASSWORD, "name": "   "}, "name", id="name-blank"
        ),
    ],
)
async def test_an_invalid_sign_up_is_400_naming_the_field(
    open_shop: Any, payload: dict[str, Any], field: str
) -> None:
    async with open_shop() as api:
        response = await api.client.post("/api/v1/users", json=payload)

        assert field in api.fields(response)
        assert PASSWORD not in response.text
        # nothing was created: the same email can still sign up
        await api.sign_up("a@example.com")


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b'{"email": "a@example.com", "password": ', id="truncated"),
        pytest.param(b"{email: a}", id="unquoted-keys"),
        pytest.param(b"\xff\xfe{}", id="not-utf8"),
        pytest.param(b"", id="empty"),
        pytest.param(b"null", id="null"),
        pytest.param(b"[]", id="array"),
        pytest.param(b'"just a string"', id="string"),
    ],
)
async def test_a_body_that_is_not_a_json_object_is_400_naming_the_body_never_500(
    open_shop: Any, raw: bytes
) -> None:
    async with open_shop() as api:
        response = await api.client.post(
            "/api/v1/users", content=raw, headers={"content-type": "application/json"}
        )

        assert api.fields(response) == {"body"}


async def test_sign_up_without_any_body_or_content_type_is_400(open_shop: Any) -> None:
    async with open_shop() as api:
        response = await api.client.post("/api/v1/users")

        assert api.fields(response) == {"body"}


async def test_a_missing_field_is_named_by_its_own_name(open_shop: Any) -> None:
    async with open_shop() as api:
        response = await api.client.post("/api/v1/users", json={"email": "a@example.com", "name": "A"})

        body = api.problem(response, 400)
        assert [e["field"] for e in body["errors"]] == ["password"]


async def test_the_password_never_appears_in_any_response(open_shop: Any) -> None:
    secret = "Sup3r-Secret-Passw0rd"
    async with open_shop() as api:
        responses = [
            await api.client.post(
                "/api/v1/users", json={"email": "pw@example.com", "password": secret, "name": "P"}
            ),
            await api.client.post(
                "/api/v1/users", json={"email": "pw@example.com", "password": secret, "name": "P"}
            ),
            await api.client.post("/api/v1/users", json={"email": "bad", "password": secret, "name": "P"}),
            await api.client.post(
                "/api/v1/users", json={"email": "pw2@example.com", "password": secret, "name": 7}
            ),
            await api.client.post("/api/v1/auth/token", json={"email": "pw@example.com", "password": secret}),
            await api.client.post(
                "/api/v1/auth/token", json={"email": "pw@example.com", "password": secret + "x"}
            ),
        ]
        token = responses[4].json()["access_token"]
        responses.append(await api.client.get("/api/v1/users/me", headers=api.bearer(token)))

        assert [r.status_code for r in responses] == [201, 409, 400, 400, 200, 401, 200]
        for response in responses:
            assert secret not in response.text
            assert "password_hash" not in response.text
            assert "argon2" not in response.text
