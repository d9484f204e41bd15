"""GET /api/v1/users/me and the token it needs: forged, expired and foreign tokens are 401;
tokens survive a restart; configured keys are used and a mismatched pair stops the start."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import stat
import time
import uuid
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shop.app import create_app
from shop.security.keys import PRIVATE_FILE, PUBLIC_FILE
from shop.security.tokens import AUDIENCE, ISSUER, TokenIssuer
from shop.settings import Settings, SettingsError


def _pem_pair() -> tuple[str, str]:
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private.decode(), public.decode()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(sub: str, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {"sub": sub, "role": "customer", "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 600}
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def _unsigned(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    head = _b64(json.dumps(header).encode())
    body = _b64(json.dumps(claims).encode())
    return f"{head}.{body}.{_b64(signature)}"


async def test_me_answers_200_with_the_callers_profile(open_shop: Any) -> None:
    async with open_shop() as api:
        user, headers = await api.customer("ada@example.com")

        response = await api.client.get("/api/v1/users/me", headers=headers)

        assert response.status_code == 200
        assert response.json() == user


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param(None, id="no-header"),
        pytest.param("Bearer garbage", id="garbage"),
        pytest.param("Bearer a.b.c", id="three-garbage-segments"),
        pytest.param("Bearer ", id="empty-bearer"),
        pytest.param("Basic YWRhQGV4YW1wbGUuY29tOmNvcnJlY3QgaG9yc2U=", id="basic"),
        pytest.param("Token abc", id="other-scheme"),
    ],
)
async def test_me_without_a_valid_bearer_token_is_401(open_shop: Any, authorization: str | None) -> None:
    async with open_shop() as api:
        headers = {"Authorization": authorization} if authorization is not None else {}

        response = await api.client.get("/api/v1/users/me", headers=headers)

        api.problem(response, 401)


async def test_forged_expired_and_foreign_tokens_are_401(open_shop: Any) -> None:
    """One user, many bad tokens for them: each one is refused, the real one still works."""
    async with open_shop() as api:
        user, good = await api.customer("ada@example.com")
        sub = user["id"]
        private_pem = (api.data_dir / PRIVATE_FILE).read_bytes()
        public_pem = (api.data_dir / PUBLIC_FILE).read_bytes()
        other_private, _ = _pem_pair()
        signing_input = _unsigned({"alg": "HS256", "typ": "JWT"}, _claims(sub)).rsplit(".", 1)[0]
        hs256_with_public_key = (
            signing_input + "." + _b64(hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest())
        )
        bad_tokens = {
            "signed by another key": TokenIssuer(other_private.encode()).issue(uuid.UUID(sub), "customer"),
            "expired": TokenIssuer(private_pem, ttl_seconds=-5).issue(uuid.UUID(sub), "customer"),
            "alg none": _unsigned({"alg": "none", "typ": "JWT"}, _claims(sub)),
            "alg none with a signature": _unsigned({"alg": "none"}, _claims(sub), b"x"),
            "HS256 with the public key as secret": hs256_with_public_key,
            "wrong audience": jwt.encode(_claims(sub, aud="another-api"), private_pem, algorithm="EdDSA"),
            "wrong issuer": jwt.encode(_claims(sub, iss="someone-else"), private_pem, algorithm="EdDSA"),
            "no exp": jwt.encode(_claims(sub, exp=None), private_pem, algorithm="EdDSA"),
            "no aud": jwt.encode(_claims(sub, aud=None), private_pem, algorithm="EdDSA"),
            "sub not a uuid": jwt.encode(_claims("admin"), private_pem, algorithm="EdDSA"),
            "unknown role": jwt.encode(_claims(sub, role="superuser"), private_pem, algorithm="EdDSA"),
        }
        # tampering with a genuine token's payload breaks its signature
        head, _, signature = good["Authorization"].removeprefix("Bearer ").split(".")
        bad_tokens["tampered payload"] = (
            f"{head}.{_b64(json.dumps(_claims(sub, role='admin')).encode())}.{signature}"
        )

        for reason, token in bad_tokens.items():
            response = await api.client.get("/api/v1/users/me", headers=api.bearer(token))
            assert response.status_code == 401, reason
            api.problem(response, 401)
            admin = await api.client.get("/api/v1/services", headers=api.bearer(token))
            assert admin.status_code == 401, reason

        assert (await api.client.get("/api/v1/users/me", headers=good)).status_code == 200


async def test_a_token_signed_with_the_data_dir_key_and_right_claims_is_accepted(open_shop: Any) -> None:
    """The control for the test above: the verifier accepts exactly what the issuer makes."""
    async with open_shop() as api:
        user, _ = await api.customer("ada@example.com")
        private_pem = (api.data_dir / PRIVATE_FILE).read_bytes()
        token = jwt.encode(_claims(user["id"]), private_pem, algorithm="EdDSA")

        response = await api.client.get("/api/v1/users/me", headers=api.bearer(token))

        assert response.status_code == 200


async def test_tokens_stay_valid_across_a_restart_on_the_same_data_dir(open_shop: Any) -> None:
    async with open_shop() as first:
        user, headers = await first.customer("ada@example.com")
        key_before = (first.data_dir / PRIVATE_FILE).read_bytes()

    async with open_shop() as second:
        response = await second.client.get("/api/v1/users/me", headers=headers)

        assert response.status_code == 200
        assert response.json() == user
        assert (second.data_dir / PRIVATE_FILE).read_bytes() == key_before


async def test_the_dev_private_key_is_kept_in_the_data_dir_readable_only_by_its_owner(open_shop: Any) -> None:
    async with open_shop() as api:
        private = api.data_dir / PRIVATE_FILE

        assert private.exists()
        assert stat.S_IMODE(private.stat().st_mode) == 0o600
        assert b"PRIVATE KEY" in private.read_bytes()
        assert b"PRIVATE" not in (api.data_dir / PUBLIC_FILE).read_bytes()


async def test_a_token_from_another_data_dir_is_401(open_shop: Any, tmp_path: Any) -> None:
    async with open_shop(data_dir=tmp_path / "one") as one:
        _, headers = await one.customer("ada@example.com")

    async with open_shop(data_dir=tmp_path / "two") as two:
        response = await two.client.get("/api/v1/users/me", headers=headers)

        two.problem(response, 401)


async def test_configured_keys_sign_and_verify_tokens(open_shop: Any) -> None:
    private, public = _pem_pair()
    env = {"SHOP_JWT_PRIVATE_KEY": private, "SHOP_JWT_PUBLIC_KEY": public}
    async with open_shop(env=env) as api:
        _, headers = await api.customer("ada@example.com")
        token = headers["Authorization"].removeprefix("Bearer ")

        claims = jwt.decode(token, public, algorithms=["EdDSA"], audience=AUDIENCE, issuer=ISSUER)
        assert claims["role"] == "customer"
        assert (await api.client.get("/api/v1/users/me", headers=headers)).status_code == 200
        assert not (api.data_dir / PRIVATE_FILE).exists()  # no dev key when keys are configured


async def test_configured_keys_may_be_given_with_escaped_newlines(open_shop: Any) -> None:
    private, public = _pem_pair()
    env = {
        "SHOP_JWT_PRIVATE_KEY": private.replace("\n", "\\n"),
        "SHOP_JWT_PUBLIC_KEY": public.replace("\n", "\\n"),
    }
    async with open_shop(env=env) as api:
        _, headers = await api.customer()
        token = headers["Authorization"].removeprefix("Bearer ")

        assert jwt.decode(token, public, algorithms=["EdDSA"], audience=AUDIENCE)["iss"] == ISSUER


def test_a_mismatched_configured_key_pair_stops_the_start_naming_the_variables(tmp_path: Any) -> None:
    private, _ = _pem_pair()
    _, foreign_public = _pem_pair()
    settings = Settings.from_env(
        {"SHOP_JWT_PRIVATE_KEY": private, "SHOP_JWT_PUBLIC_KEY": foreign_public}, data_dir=tmp_path
    )

    with pytest.raises(SettingsError) as raised:
        create_app(settings)

    assert "SHOP_JWT_PRIVATE_KEY" in str(raised.value)
    assert "SHOP_JWT_PUBLIC_KEY" in str(raised.value)
    assert "BEGIN" not in str(raised.value)  # the key itself is not echoed


def test_a_configured_key_that_is_not_pem_stops_the_start(tmp_path: Any) -> None:
    _, public = _pem_pair()
    settings = Settings.from_env(
        {
            "SHOP_JWT_PRIVATE_KEY": "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----",
            "SHOP_JWT_PUBLIC_KEY": public,
        },
        data_dir=tmp_path,
    )

    with pytest.raises(SettingsError, match="SHOP_JWT_PRIVATE_KEY"):
        create_app(settings)
