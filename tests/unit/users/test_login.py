"""POST /api/v1/auth/token: logging in, bad credentials, the per-email login rate limit."""

from __future__ import annotations

from typing import Any

import jwt
import pytest

from shop.security.keys import PUBLIC_FILE
from shop.security.tokens import AUDIENCE, ISSUER
from shop.settings import RateLimit

PASSWORD = "correct horse battery"


async def test_login_is_200_with_a_bearer_access_token_and_its_lifetime(open_shop: Any) -> None:
    async with open_shop() as api:
        user = await api.sign_up("ada@example.com")

        response = await api.client.post(
            "/api/v1/auth/token", json={"email": "ada@example.com", "password": PASSWORD}
        )

        assert response.status_code == 200
        body = response.json()
        assert set(body) == {"access_token", "token_type", "expires_in"}
        assert body["token_type"] == "bearer"
        assert isinstance(body["expires_in"], int)
        assert body["expires_in"] > 0
        public_pem = (api.data_dir / PUBLIC_FILE).read_bytes()
        claims = jwt.decode(
            body["access_token"], public_pem, algorithms=["EdDSA"], audience=AUDIENCE, issuer=ISSUER
        )
        assert claims["sub"] == user["id"]
        assert claims["role"] == "customer"
        assert claims["exp"] - claims["iat"] == body["expires_in"]
        assert jwt.get_unverified_header(body["access_token"])["alg"] == "EdDSA"


async def test_login_ignores_the_case_and_surrounding_blanks_of_the_email(open_shop: Any) -> None:
    async with open_shop() as api:
        await api.sign_up("ada@example.com")

        response = await api.client.post(
            "/api/v1/auth/token", json={"email": "  ADA@Example.com ", "password": PASSWORD}
        )

        assert response.status_code == 200


async def test_a_wrong_password_and_an_unknown_email_give_the_same_401(open_shop: Any) -> None:
    async with open_shop() as api:
        await api.sign_up("ada@example.com")

        wrong_password = await api.client.post(
            "/api/v1/auth/token", json={"email": "ada@example.com", "password": "not the password"}
        )
        unknown_email = await api.client.post(
            "/api/v1/auth/token", json={"email": "nobody@example.com", "password": "not the password"}
        )

        assert api.problem(wrong_password, 401) == api.problem(unknown_email, 401)
        assert wrong_password.content == unknown_email.content
        assert "bearer" not in wrong_password.text.lower()


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        pytest.param({"password": PASSWORD}, "email", id="missing-email"),
        pytest.param({"email": "ada@example.com"}, "password", id="missing-password"),
        pytest.param({"email": "ada@example.com", "password": ""}, "password", id="empty-password"),
        pytest.param({"email": ["ada@example.com"], "password": PASSWORD}, "email", id="email-list"),
    ],
)
async def test_an_invalid_login_body_is_400_naming_the_field(
    open_shop: Any, payload: dict[str, Any], field: str
) -> None:
    async with open_shop() as api:
        response = await api.client.post("/api/v1/auth/token", json=payload)

        assert field in api.fields(response)


async def test_malformed_json_on_login_is_400_not_500(open_shop: Any) -> None:
    async with open_shop() as api:
        response = await api.client.post(
            "/api/v1/auth/token", content=b'{"email": ', headers={"content-type": "application/json"}
        )

        assert api.fields(response) == {"body"}


async def test_the_login_rate_limit_per_email_answers_429_with_retry_after(open_shop: Any) -> None:
    async with open_shop(login_rate_limit=RateLimit(3, 60), clock=lambda: 1000.0) as api:
        await api.sign_up("target@example.com")
        await api.sign_up("bystander@example.com")

        for _ in range(3):
            wrong = await api.client.post(
                "/api/v1/auth/token", json={"email": "target@example.com", "password": "guess-guess"}
            )
            api.problem(wrong, 401)
        # the fourth attempt is refused before the password is even looked at, right or wrong
        limited = await api.client.post(
            "/api/v1/auth/token", json={"email": "target@example.com", "password": PASSWORD}
        )

        api.problem(limited, 429)
        assert int(limited.headers["retry-after"]) >= 1
        assert "access_token" not in limited.text
        # another email is not affected
        other = await api.client.post(
            "/api/v1/auth/token", json={"email": "bystander@example.com", "password": PASSWORD}
        )
        assert other.status_code == 200


async def test_the_login_rate_limit_counts_an_email_in_any_case_as_one(open_shop: Any) -> None:
    async with open_shop(login_rate_limit=RateLimit(2, 60), clock=lambda: 1000.0) as api:
        await api.sign_up("ada@example.com")
        for email in ("ada@example.com", "ADA@example.com"):
            response = await api.client.post(
                "/api/v1/auth/token", json={"email": email, "password": PASSWORD}
            )
            assert response.status_code == 200

        limited = await api.client.post(
            "/api/v1/auth/token", json={"email": " Ada@Example.COM", "password": PASSWORD}
        )

        api.problem(limited, 429)
        assert "retry-after" in limited.headers


async def test_the_login_rate_limit_window_resets_after_its_period(open_shop: Any) -> None:
    now = [1000.0]
    async with open_shop(login_rate_limit=RateLimit(1, 60), clock=lambda: now[0]) as api:
        await api.sign_up("ada@example.com")
        assert (
            await api.client.post(
                "/api/v1/auth/token", json={"email": "ada@example.com", "password": PASSWORD}
            )
        ).status_code == 200
        limited = await api.client.post(
            "/api/v1/auth/token", json={"email": "ada@example.com", "password": PASSWORD}
        )
        api.problem(limited, 429)
        assert int(limited.headers["retry-after"]) == 60  # the first hit opened [1000, 1060)

        now[0] += 60

        again = await api.client.post(
            "/api/v1/auth/token", json={"email": "ada@example.com", "password": PASSWORD}
        )
        assert again.status_code == 200
