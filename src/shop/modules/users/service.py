"""The users domain: accounts and their addresses, over one session."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from shop.bus.clock import as_utc
from shop.contracts.users import AddressPage, AddressView, UserView
from shop.db import Prepared, savepoint
from shop.modules.users.models import addresses, users


class EmailTaken(Exception):
    """Another account already uses this email."""


def normalise_email(email: str) -> str:
    return email.strip().lower()


_ADDRESS_OF = Prepared(
    sa.select(addresses).where(
        addresses.c.id == sa.bindparam("b_id"), addresses.c.user_id == sa.bindparam("b_user_id")
    )
)


class UserDirectory:
    def __init__(self, session: AsyncConnection) -> None:
        self.session = session

    async def create(self, *, email: str, name: str, password_hash: str, role: str) -> UserView:
        email = normalise_email(email)
        if await self.find_by_email(email) is not None:
            raise EmailTaken(email)
        user_id = uuid.uuid4()
        try:
            async with savepoint(self.session):
                await self.session.execute(
                    users.insert().values(
                        id=user_id,
                        email=email,
                        name=name,
                        password_hash=password_hash,
                        role=role,
                        created_at=datetime.now(UTC),
                    )
                )
        except IntegrityError:
            raise EmailTaken(email) from None
        return UserView(id=user_id, email=email, name=name, role=role)

    async def find_by_email(self, email: str) -> tuple[UserView, str] | None:
        row = (
            await self.session.execute(sa.select(users).where(users.c.email == normalise_email(email)))
        ).first()
        if row is None:
            return None
        return _user(row._mapping), row._mapping["password_hash"]

    async def set_password_hash(self, user_id: uuid.UUID, password_hash: str) -> None:
        await self.session.execute(
            users.update().where(users.c.id == user_id).values(password_hash=password_hash)
        )

    async def get(self, user_id: uuid.UUID) -> UserView | None:
        row = (await self.session.execute(sa.select(users).where(users.c.id == user_id))).first()
        return _user(row._mapping) if row is not None else None

    async def add_address(self, user_id: uuid.UUID, **fields: Any) -> AddressView:
        address_id = uuid.uuid4()
        created_at = datetime.now(UTC)
        await self.session.execute(
            addresses.insert().values(id=address_id, user_id=user_id, created_at=created_at, **fields)
        )
        return AddressView(id=address_id, user_id=user_id, created_at=created_at, **fields)

    async def addresses(
        self, user_id: uuid.UUID, *, limit: int, after: tuple[datetime, uuid.UUID] | None
    ) -> AddressPage:
        query = sa.select(addresses).where(addresses.c.user_id == user_id)
        if after is not None:
            query = query.where(sa.tuple_(addresses.c.created_at, addresses.c.id) > sa.tuple_(*after))
        query = query.order_by(addresses.c.created_at, addresses.c.id).limit(limit + 1)
        rows = [_address(r._mapping) for r in await self.session.execute(query)]
        return AddressPage(items=tuple(rows[:limit]), has_more=len(rows) > limit)

    async def address_of(self, address_id: uuid.UUID, user_id: uuid.UUID) -> AddressView | None:
        found = (
            await _ADDRESS_OF.execute(self.session, {"b_id": address_id, "b_user_id": user_id})
        ).mappings()
        return _address(found[0]) if found else None


def _user(m: Any) -> UserView:
    return UserView(id=m["id"], email=m["email"], name=m["name"], role=m["role"])


def _address(m: Any) -> AddressView:
    return AddressView(
        id=m["id"],
        user_id=m["user_id"],
        recipient=m["recipient"],
        line1=m["line1"],
        line2=m["line2"],
        city=m["city"],
        postal_code=m["postal_code"],
        country=m["country"],
        created_at=as_utc(m["created_at"]),
    )
