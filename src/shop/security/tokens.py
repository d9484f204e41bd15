"""JWT access tokens: issued by users (private key), verified everywhere (public key).

The algorithm is pinned to EdDSA; `exp`, `iat`, `iss`, `aud` and `sub` are required.
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass

import jwt

ALGORITHM = "EdDSA"
ISSUER = "shop-users"
AUDIENCE = "shop-api"
ROLES = ("customer", "admin")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the token's subject and role."""

    user_id: uuid.UUID
    role: str
    email: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


class InvalidToken(Exception):
    """The token is missing, malformed, forged, expired or for someone else."""


class TokenIssuer:
    def __init__(self, private_pem: bytes, *, ttl_seconds: int = 3600) -> None:
        self._private_pem = private_pem
        self.ttl_seconds = ttl_seconds

    def issue(self, user_id: uuid.UUID, role: str, email: str | None = None) -> str:
        now = int(time.time())
        claims = {
            "sub": str(user_id),
            "role": role,
            "iss": ISSUER,
            "aud": AUDIENCE,
            "iat": now,
            "exp": now + self.ttl_seconds,
            "jti": uuid.uuid4().hex,
        }
        if email is not None:
            claims["email"] = email
        return jwt.encode(claims, self._private_pem, algorithm=ALGORITHM)


class TokenVerifier:
    """Verifies tokens; remembers recent good ones (until they expire) to spare the signature check."""

    def __init__(self, public_pem: bytes, *, cache_size: int = 4096, leeway: int = 0) -> None:
        self._public_pem = public_pem
        self._cache: OrderedDict[str, tuple[Principal, int]] = OrderedDict()
        self._cache_size = cache_size
        self._leeway = leeway

    def verify(self, token: str) -> Principal:
        cached = self._cache.get(token)
        if cached is not None:
            principal, exp = cached
            if exp > time.time():
                self._cache.move_to_end(token)
                return principal
            del self._cache[token]
        try:
            claims = jwt.decode(
                token,
                self._public_pem,
                algorithms=[ALGORITHM],
                audience=AUDIENCE,
                issuer=ISSUER,
                leeway=self._leeway,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )
            principal = Principal(uuid.UUID(claims["sub"]), str(claims["role"]), claims.get("email"))
        except (jwt.PyJWTError, KeyError, ValueError, TypeError) as exc:
            raise InvalidToken(str(exc) or type(exc).__name__) from None
        if principal.role not in ROLES:
            raise InvalidToken(f"unknown role {principal.role!r}")
        self._cache[token] = (principal, int(claims["exp"]))
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return principal
