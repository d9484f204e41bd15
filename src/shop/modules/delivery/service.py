"""The delivery domain: deliveries and their transitions, over one session; and the shipping
instructions earlier versions kept from OrderAwaitingPayment (read for orders completed by an
orders version whose OrderCompleted did not carry the address, and for whose order it is).

PREPARING → SHIPPED → IN_TRANSIT → DELIVERED; PREPARING → CANCELLED. Nothing else.
"""

from __future__ import annotations

import secrets
import string
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from shop.bus.clock import as_utc
from shop.contracts.delivery import AddressSnapshot, DeliveryPage, DeliveryView
from shop.db import Prepared
from shop.db_tables import is_marked_cancelled, keyset_rows, mark_cancelled
from shop.modules.delivery.models import cancelled_orders, deliveries, shipping_instructions

PREPARING = "PREPARING"
SHIPPED = "SHIPPED"
IN_TRANSIT = "IN_TRANSIT"
DELIVERED = "DELIVERED"
CANCELLED = "CANCELLED"
STATUSES = (PREPARING, SHIPPED, IN_TRANSIT, DELIVERED, CANCELLED)
TRANSITIONS: dict[str, frozenset[str]] = {
    PREPARING: frozenset({SHIPPED, CANCELLED}),
    SHIPPED: frozenset({IN_TRANSIT}),
    IN_TRANSIT: frozenset({DELIVERED}),
    DELIVERED: frozenset(),
    CANCELLED: frozenset(),
}
_TRACKING_ALPHABET = string.ascii_uppercase + string.digits
_ADDRESS_FIELDS = ("recipient", "line1", "line2", "city", "postal_code", "country")


def can_move(source: str, target: str) -> bool:
    return target in TRANSITIONS.get(source, frozenset())


def tracking_number() -> str:
    """ "SHP" and 12 random upper-case letters and digits."""
    return "SHP" + "".join(secrets.choice(_TRACKING_ALPHABET) for _ in range(12))


# The hot statements, prepared once (shop.db.Prepared).
_INSTRUCTION = Prepared(
    sa.select(shipping_instructions).where(shipping_instructions.c.order_id == sa.bindparam("b_order_id"))
)
_CREATE = Prepared(deliveries.insert())
_OF_ORDER = Prepared(
    sa.select(deliveries).where(deliveries.c.order_id == sa.bindparam("b_order_id")).with_for_update()
)


@dataclass(frozen=True, slots=True)
class Instruction:
    order_id: uuid.UUID
    customer_id: uuid.UUID
    address: AddressSnapshot


def _address(m: Any) -> AddressSnapshot:
    return AddressSnapshot(**{name: m[name] for name in _ADDRESS_FIELDS})


def _delivery(m: Any) -> DeliveryView:
    return DeliveryView(
        id=m["id"],
        order_id=m["order_id"],
        customer_id=m["customer_id"],
        status=m["status"],
        tracking_number=m["tracking_number"],
        address=_address(m),
        created_at=as_utc(m["created_at"]),
        updated_at=as_utc(m["updated_at"]),
    )


class DeliveryDesk:
    def __init__(self, session: AsyncConnection) -> None:
        self.session = session

    # -- shipping instructions --------------------------------------------------------------

    async def instruction(self, order_id: uuid.UUID) -> Instruction | None:
        found = (await _INSTRUCTION.execute(self.session, {"b_order_id": order_id})).mappings()
        if not found:
            return None
        return Instruction(found[0]["order_id"], found[0]["customer_id"], _address(found[0]))

    # -- deliveries ---------------------------------------------------------------------------

    async def create(self, instruction: Instruction) -> DeliveryView:
        now = datetime.now(UTC)
        view = DeliveryView(
            id=uuid.uuid4(),
            order_id=instruction.order_id,
            customer_id=instruction.customer_id,
            status=PREPARING,
            tracking_number=None,
            address=instruction.address,
            created_at=now,
            updated_at=now,
        )
        await _CREATE.execute(
            self.session,
            {
                "id": view.id,
                "order_id": view.order_id,
                "customer_id": view.customer_id,
                "status": view.status,
                "created_at": now,
                "updated_at": now,
                **{name: getattr(view.address, name) for name in _ADDRESS_FIELDS},
            },
        )
        return view

    async def get(self, delivery_id: uuid.UUID) -> DeliveryView | None:
        query = sa.select(deliveries).where(deliveries.c.id == delivery_id).with_for_update()
        row = (await self.session.execute(query)).first()
        return _delivery(row._mapping) if row is not None else None

    async def of_order(self, order_id: uuid.UUID) -> DeliveryView | None:
        found = (await _OF_ORDER.execute(self.session, {"b_order_id": order_id})).mappings()
        return _delivery(found[0]) if found else None

    async def move(self, delivery: DeliveryView, target: str) -> DeliveryView:
        """Set the status (the caller checked the transition); a tracking number at SHIPPED."""
        now = datetime.now(UTC)
        values: dict[str, Any] = {"status": target, "updated_at": now}
        if target == SHIPPED and delivery.tracking_number is None:
            values["tracking_number"] = tracking_number()
        await self.session.execute(deliveries.update().where(deliveries.c.id == delivery.id).values(**values))
        return DeliveryView(
            id=delivery.id,
            order_id=delivery.order_id,
            customer_id=delivery.customer_id,
            status=target,
            tracking_number=values.get("tracking_number", delivery.tracking_number),
            address=delivery.address,
            created_at=delivery.created_at,
            updated_at=now,
        )

    # -- cancellations ------------------------------------------------------------------------

    async def call_off(self, order_id: uuid.UUID, reason: str) -> None:
        """Remember that the order's delivery is off, so that none is created later (idempotent)."""
        await mark_cancelled(self.session, cancelled_orders, order_id, reason)

    async def is_called_off(self, order_id: uuid.UUID) -> bool:
        return await is_marked_cancelled(self.session, cancelled_orders, order_id)

    # -- reading ------------------------------------------------------------------------------

    async def owner_of(self, order_id: uuid.UUID) -> uuid.UUID | None:
        """Whose order this is, as far as delivery knows (from its instruction or delivery)."""
        instruction = await self.instruction(order_id)
        if instruction is not None:
            return instruction.customer_id
        row = (
            await self.session.execute(
                sa.select(deliveries.c.customer_id).where(deliveries.c.order_id == order_id)
            )
        ).first()
        return row[0] if row is not None else None

    async def page(
        self,
        *,
        customer_id: uuid.UUID | None,
        order_id: uuid.UUID | None,
        limit: int,
        after: tuple[datetime, uuid.UUID] | None,
    ) -> DeliveryPage:
        rows, has_more = await keyset_rows(
            self.session,
            deliveries,
            equal={"customer_id": customer_id, "order_id": order_id},
            limit=limit,
            after=after,
        )
        return DeliveryPage(items=tuple(_delivery(r) for r in rows), has_more=has_more)
