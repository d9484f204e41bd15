"""TokenIssuer / TokenVerifier: EdDSA pinned, iss/aud/exp/iat/sub required, role checked."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from datetime import datetime, tzinfo
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shop.security.tokens import (
    ALGORITHM,
    AUDIENCE,
    ISSUER,
    InvalidToken,
    Principal,
    TokenIssuer,
    TokenVerifier,
)

USER = uuid.UUID("0b5c6a52-6c7e-4c8a-9d0e-1f2a3b4c5d6e")


def _pair() -> tuple[bytes, bytes]:
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public


@pytest.fixture(scope="module")
def keys() -> tuple[bytes, bytes]:
    return _pair()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": str(USER),
        "role": "customer",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 300,
    }
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def _signed(private: bytes, **changes: Any) -> str:
    return jwt.encode(_claims(**changes), private, algorithm=ALGORITHM)


def test_an_issued_token_verifies_to_its_principal(keys: tuple[bytes, bytes]) -> None:
    private, public = keys
    token = TokenIssuer(private).issue(USER, "admin", "boss@example.com")

    principal = TokenVerifier(public).verify(token)

    assert principal == Principal(USER, "admin", "boss@example.com")
    assert principal.is_admin


def test_an_issued_token_is_eddsa_with_issuer_audience_and_lifetime(keys: tuple[bytes, bytes]) -> None:
    private, public = keys
    issuer = TokenIssuer(private, ttl_seconds=120)

    token = issuer.issue(USER, "customer")

    assert jwt.get_unverified_header(token)["alg"] == "EdDSA"
    claims = jwt.decode(token, public, algorithms=["EdDSA"], audience=AUDIENCE, issuer=ISSUER)
    assert claims["sub"] == str(USER)
    assert claims["role"] == "customer"
    assert claims["exp"] - claims["iat"] == 120
    assert abs(claims["iat"] - time.time()) < 5
    assert "email" not in claims
    assert claims["jti"]


def test_two_tokens_for_the_same_user_differ(keys: tuple[bytes, bytes]) -> None:
    issuer = TokenIssuer(keys[0])

    assert issuer.issue(USER, "customer") != issuer.issue(USER, "customer")


def test_a_customer_principal_is_not_admin(keys: tuple[bytes, bytes]) -> None:
    principal = TokenVerifier(keys[1]).verify(TokenIssuer(keys[0]).issue(USER, "customer"))

    assert not principal.is_admin


def test_a_token_signed_by_another_key_is_invalid(keys: tuple[bytes, bytes]) -> None:
    other_private, _ = _pair()

    with pytest.raises(InvalidToken):
        TokenVerifier(keys[1]).verify(TokenIssuer(other_private).issue(USER, "customer"))


def test_an_expired_token_is_invalid(keys: tuple[bytes, bytes]) -> None:
    token = TokenIssuer(keys[0], ttl_seconds=-1).issue(USER, "customer")

    with pytest.raises(InvalidToken, match="xpired"):
        TokenVerifier(keys[1]).verify(token)


def test_a_token_just_expired_is_accepted_only_within_the_configured_leeway(
    keys: tuple[bytes, bytes],
) -> None:
    token = _signed(keys[0], exp=int(time.time()) - 10)

    with pytest.raises(InvalidToken):
        TokenVerifier(keys[1]).verify(token)
    assert TokenVerifier(keys[1], leeway=60).verify(token).user_id == USER


def test_alg_none_is_invalid(keys: tuple[bytes, bytes]) -> None:
    header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    payload = _b64(json.dumps(_claims()).encode())

    with pytest.raises(InvalidToken):
        TokenVerifier(keys[1]).verify(f"{header}.{payload}.")


def test_hs256_signed_with_the_public_key_as_secret_is_invalid(keys: tuple[bytes, bytes]) -> None:
    """The classic algorithm-confusion attack: the verifier must not HMAC with its public key."""
    public = keys[1]
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = _b64(json.dumps(_claims(role="admin")).encode())
    signature = _b64(hmac.new(public, f"{header}.{payload}".encode(), hashlib.sha256).digest())

    with pytest.raises(InvalidToken):
        TokenVerifier(public).verify(f"{header}.{payload}.{signature}")


@pytest.mark.parametrize(
    "make_key",
    [
        pytest.param(lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048), id="RS256"),
        pytest.param(lambda: ec.generate_private_key(ec.SECP256R1()), id="ES256"),
    ],
)
def test_other_asymmetric_algorithms_are_invalid_even_with_a_valid_signature(
    keys: tuple[bytes, bytes], make_key: Any
) -> None:
    key = make_key()
    algorithm = "RS256" if isinstance(key, rsa.RSAPrivateKey) else "ES256"
    token = jwt.encode(_claims(), key, algorithm=algorithm)

    with pytest.raises(InvalidToken):
        TokenVerifier(keys[1]).verify(token)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        pytest.param({"aud": "another-api"}, "wrong audience", id="aud"),
        pytest.param({"iss": "someone-else"}, "wrong issuer", id="iss"),
        pytest.param({"aud": None}, "no audience", id="no-aud"),
        pytest.param({"iss": None}, "no issuer", id="no-iss"),
        pytest.param({"exp": None}, "no expiry", id="no-exp"),
        pytest.param({"iat": None}, "no issued-at", id="no-iat"),
        pytest.param({"sub": None}, "no subject", id="no-sub"),
        pytest.param({"sub": "not-a-uuid"}, "subject not a uuid", id="sub-not-uuid"),
        pytest.param({"role": None}, "no role", id="no-role"),
        pytest.param({"role": "superuser"}, "unknown role", id="unknown-role"),
        pytest.param({"nbf": int(time.time()) + 3600}, "not yet valid", id="nbf-future"),
    ],
)
def test_a_token_with_bad_claims_is_invalid(
    keys: tuple[bytes, bytes], changes: dict[str, Any], reason: str
) -> None:
    token = _signed(keys[0], **changes)

    with pytest.raises(InvalidToken):
        TokenVerifier(keys[1]).verify(token)


@pytest.mark.parametrize("token", ["", "garbage", "a.b.c", "a.b", "....", "é.é.é"])
def test_garbage_is_invalid(keys: tuple[bytes, bytes], token: str) -> None:
    with pytest.raises(InvalidToken):
        TokenVerifier(keys[1]).verify(token)


def test_a_tampered_payload_is_invalid(keys: tuple[bytes, bytes]) -> None:
    token = TokenIssuer(keys[0]).issue(USER, "customer")
    header, _, signature = token.split(".")
    forged_payload = _b64(json.dumps(_claims(role="admin")).encode())

    with pytest.raises(InvalidToken):
        TokenVerifier(keys[1]).verify(f"{header}.{forged_payload}.{signature}")


def test_a_verifier_remembers_good_tokens_but_never_bad_ones(keys: tuple[bytes, bytes]) -> None:
    verifier = TokenVerifier(keys[1], cache_size=2)
    issuer = TokenIssuer(keys[0])
    tokens = [issuer.issue(uuid.uuid4(), "customer") for _ in range(3)]

    principals = [verifier.verify(token) for token in tokens]
    again = [verifier.verify(token) for token in tokens]  # past the cache size: verified again

    assert principals == again
    bad = TokenIssuer(keys[0], ttl_seconds=-1).issue(USER, "customer")
    for _ in range(2):
        with pytest.raises(InvalidToken):
            verifier.verify(bad)


def test_a_token_cached_as_good_stops_working_when_it_expires(
    keys: tuple[bytes, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    verifier = TokenVerifier(keys[1])
    token = TokenIssuer(keys[0], ttl_seconds=60).issue(USER, "customer")
    assert verifier.verify(token).user_id == USER

    later = time.time() + 3600

    class Later(datetime):
        @classmethod
        def now(cls, tz: tzinfo | None = None) -> Later:  # type: ignore[override]
            return cls.fromtimestamp(later, tz)

    # an hour on, for the verifier's cache (time.time) and for PyJWT (datetime.now) alike
    monkeypatch.setattr(time, "time", lambda: later)
    monkeypatch.setattr("jwt.api_jwt.datetime", Later)

    with pytest.raises(InvalidToken):
        verifier.verify(token)
