"""The published language of the users module: the messages it owns."""

from __future__ import annotations

import uuid
from datetime import datetime

import msgspec

from shop.bus.messages import Command, Event, Query


class UserView(msgspec.Struct, frozen=True, kw_only=True):
    id: uuid.UUID
    email: str
    name: str
    role: str


class AddressView(msgspec.Struct, frozen=True, kw_only=True):
    id: uuid.UUID
    user_id: uuid.UUID
    recipient: str
    line1: str
    line2: str | None
    city: str
    postal_code: str
    country: str
    created_at: datetime


class RegisterUser(Command, frozen=True, kw_only=True):
    """Sign up a customer. Replies UserView, or Rejected("EMAIL_TAKEN" | "BUSY": no hashing slot now)."""

    email: str
    password: str
    name: str


class CreateAdmin(Command, frozen=True, kw_only=True):
    """Create an admin user if the email is free. Replies UserView, or Rejected("EMAIL_TAKEN")."""

    email: str
    password: str
    name: str = "Administrator"


class IssueToken(Query, frozen=True, kw_only=True):
    """Log in. Replies TokenIssued, or Rejected("BAD_CREDENTIALS") for any wrong pair, or
    Rejected("BUSY") when no password can be checked right now."""

    email: str
    password: str


class TokenIssued(msgspec.Struct, frozen=True, kw_only=True):
    access_token: str
    token_type: str
    expires_in: int


class GetUser(Query, frozen=True, kw_only=True):
    """Replies UserView or None."""

    user_id: uuid.UUID


class AddAddress(Command, frozen=True, kw_only=True):
    """Replies AddressView."""

    user_id: uuid.UUID
    recipient: str
    line1: str
    line2: str | None = None
    city: str
    postal_code: str
    country: str


class ListAddresses(Query, frozen=True, kw_only=True):
    """Replies AddressPage: the user's addresses, oldest first."""

    user_id: uuid.UUID
    limit: int = 20
    after: tuple[str, str] | None = None  # (created_at ISO, id) of the last item seen


class AddressPage(msgspec.Struct, frozen=True, kw_only=True):
    items: tuple[AddressView, ...]
    has_more: bool


class GetAddress(Query, frozen=True, kw_only=True):
    """The address, only if it belongs to `user_id`; else None. Orders asks it."""

    address_id: uuid.UUID
    user_id: uuid.UUID


class UserRegistered(Event, frozen=True, kw_only=True):
    user_id: uuid.UUID
    email: str
    role: str
