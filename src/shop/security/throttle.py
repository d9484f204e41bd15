"""Throttling logins and sign-ups, which a module can ask without knowing where the counters live.

Each attempt counts twice: against the client's address (`SHOP_AUTH_ADDRESS_RATE_LIMIT`, so
one client spraying unknown emails is limited) and against the email *from that address*
(`SHOP_LOGIN_RATE_LIMIT`, so guessing one account's password is limited, while a stranger
exhausting it from elsewhere does not lock the account's owner out).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Throttle(Protocol):
    async def __call__(self, action: str, email: str, address: str) -> float | None:
        """Count one `action` ("login", "signup") for `email` from `address`; None when
        allowed, else seconds to wait."""
        ...


def client_address(scope: Mapping[str, Any], *, behind_gateway: bool) -> str:
    """The client's address: the peer's, or -- for a service that only `shop gateway` reaches
    -- the last X-Forwarded-For entry, which that gateway appends (earlier entries are the
    client's own claims and are not trusted)."""
    if behind_gateway:
        forwarded = [
            value.decode("latin-1")
            for name, value in scope.get("headers", ())
            if name.lower() == b"x-forwarded-for"
        ]
        if forwarded:
            last: str = forwarded[-1].split(",")[-1].strip()
            if last:
                return last
    client = scope.get("client")
    return str(client[0]) if client else "unknown"
