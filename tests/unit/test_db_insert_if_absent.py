"""InsertIfAbsent: one statement that inserts a row or leaves the row of its key alone, on both
backends, the same whether the key is the primary key or another unique one."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa

from shop.db import unit_of_work
from shop.db_tables import InsertIfAbsent

pytestmark = pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)

metadata = sa.MetaData(schema="claims")
claims = sa.Table(
    "claims",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("key", sa.String(20), nullable=False, unique=True),
    sa.Column("owner", sa.String(20), nullable=False),
)
CLAIM = InsertIfAbsent(claims)
OWNERS = sa.select(claims.c.key, claims.c.owner).order_by(claims.c.key)


async def test_the_first_insert_of_a_key_wins_and_a_second_is_left_alone(
    make_database: Callable[..., Any],
) -> None:
    database = await make_database("claims", metadata)
    first = uuid.uuid4()
    async with unit_of_work(database) as uow:
        made = await CLAIM.execute(uow, {"id": first, "key": "a", "owner": "first"})
        same_id = await CLAIM.execute(uow, {"id": first, "key": "b", "owner": "second"})
        same_key = await CLAIM.execute(uow, {"id": uuid.uuid4(), "key": "a", "owner": "third"})
        other = await CLAIM.execute(uow.session, {"id": uuid.uuid4(), "key": "c", "owner": "fourth"})
    async with unit_of_work(database, write=False) as uow:
        rows = [tuple(r) for r in (await uow.session.execute(OWNERS)).all()]

    assert (made, same_id, same_key, other) == (True, False, False, True)
    assert rows == [("a", "first"), ("c", "fourth")]
