"""HTTP controllers of the payments module: thin, they turn requests into queries."""

from __future__ import annotations

import uuid

import msgspec
from litestar import Controller, get
from litestar.params import FromQuery

from shop.contracts.payments import ListPayments, PaymentView
from shop.security.guards import authenticated
from shop.web.owned_lists import owned_list
from shop.web.pagination import Cursor, Limit, Page
from shop.web.params import BusDep, SignedIn

STATUSES = {"NOT_FOUND": 404}


class Payment(msgspec.Struct):
    id: str
    order_id: str
    amount: int
    currency: str
    status: str
    provider_ref: str | None


def _payment(view: PaymentView) -> Payment:
    return Payment(
        str(view.id), str(view.order_id), view.amount, view.currency, view.status, view.provider_ref
    )


class PaymentsController(Controller):
    path = "/api/v1"
    tags = ["payments"]

    @get(
        "/payments",
        guards=[authenticated],
        summary="Payments: the caller's own (an admin's: all)",
        problems={404: "`order_id` names an order that is not the caller's"},
    )
    async def payments(
        self,
        request: SignedIn,
        bus: BusDep,
        order_id: FromQuery[uuid.UUID | None] = None,
        limit: Limit = 20,
        cursor: Cursor = None,
    ) -> Page[Payment]:
        return await owned_list(
            bus, request.user, ListPayments, STATUSES, _payment, order_id=order_id, limit=limit, cursor=cursor
        )
