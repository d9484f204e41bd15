"""The guard: a published message's schema may change only compatibly, else it gets a new
version beside the old one; the committed snapshot is current."""

from __future__ import annotations

import copy
import uuid
from typing import Any, ClassVar

import msgspec
import pytest

from shop.app import load_module
from shop.bus.messages import Command, Event
from shop.bus.module import Module
from shop.settings import MODULE_NAMES

from .compat import breaks
from .snapshot import current, dump, load, problems, published_messages, retire, unhandled, unpublish


def schema(cls: type[msgspec.Struct]) -> dict[str, Any]:
    return msgspec.json.schema(cls)  # type: ignore[no-any-return]


# -- the committed snapshot -----------------------------------------------------------------


def test_no_published_message_breaks_its_recorded_contract() -> None:
    assert problems(load(), current()) == []


def test_the_snapshot_is_current() -> None:
    recorded = load()
    live = {name: entry for name, entry in recorded["messages"].items() if name not in recorded["retired"]}

    assert live == current(), (
        "tests/contracts/snapshot.json is not current: after a compatible change run"
        " `.venv/bin/python -m tests.contracts.snapshot --write` and commit it"
    )


def test_the_snapshot_holds_every_published_message() -> None:
    names = set(load()["messages"])

    assert {"catalog.ReserveStock.v1", "payments.PaymentCaptured.v1", "bus.Rejected.v1"} <= names
    assert set(published_messages()) <= names


# -- what counts as a break -----------------------------------------------------------------


class Line(msgspec.Struct, frozen=True, kw_only=True):
    product_id: uuid.UUID
    quantity: int


class Reserve(msgspec.Struct, frozen=True, kw_only=True):
    """Reserve stock."""

    reservation_id: uuid.UUID
    lines: tuple[Line, ...]
    note: str | None = None


def reserve_with(**fields: Any) -> dict[str, Any]:
    """Reserve's schema with its fields changed: name -> type (with a default when a tuple
    (type, default)), or None to remove it."""
    annotations = {"reservation_id": uuid.UUID, "lines": tuple[Line, ...], "note": (str | None, None)}
    annotations.update(fields)
    spec = []
    for name, kind in annotations.items():
        if kind is None:
            continue
        spec.append((name, *kind) if isinstance(kind, tuple) else (name, kind))
    cls = msgspec.defstruct("Reserve", spec, kw_only=True, frozen=True)
    return schema(cls)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"note": None}, "field note removed"),
        ({"reservation_id": None, "reservation": uuid.UUID}, "field reservation_id removed (or renamed)"),
        ({"reservation_id": str}, "reservation_id retyped"),
        ({"note": (int | None, None)}, "note retyped"),
        ({"priority": int}, "new required field priority"),
        ({"note": str | None}, "field note became required"),
    ],
)
def test_a_removed_renamed_retyped_or_new_required_field_is_a_break(
    change: dict[str, Any], reason: str
) -> None:
    found = breaks(schema(Reserve), reserve_with(**change))

    assert any(reason in line for line in found), found


def test_a_field_removed_from_a_nested_struct_is_a_break() -> None:
    class ThinLine(msgspec.Struct, frozen=True, kw_only=True):
        product_id: uuid.UUID

    found = breaks(schema(Reserve), reserve_with(lines=tuple[ThinLine, ...]))

    assert found == ["field lines.quantity removed (or renamed)"]


@pytest.mark.parametrize(
    "change",
    [
        {},
        {"priority": (int, 0)},  # a new field with a default
        {"note": (str | None, "none given")},  # another default
        {"reservation_id": (uuid.UUID, uuid.UUID(int=0))},  # required -> optional
    ],
)
def test_a_new_optional_field_or_a_new_default_is_compatible(change: dict[str, Any]) -> None:
    assert breaks(schema(Reserve), reserve_with(**change)) == []


def test_docstrings_and_the_names_of_nested_classes_are_not_the_wire() -> None:
    class OrderLine(msgspec.Struct, frozen=True, kw_only=True):
        """Renamed and documented."""

        product_id: uuid.UUID
        quantity: int

    assert breaks(schema(Reserve), reserve_with(lines=tuple[OrderLine, ...])) == []


# -- versions beside each other --------------------------------------------------------------


def with_entry(code: dict[str, Any], name: str, kind: str, cls: type[msgspec.Struct]) -> dict[str, Any]:
    changed = copy.deepcopy(code)
    changed[name] = {"kind": kind, "schema": schema(cls)}
    return changed


class ReserveStockV2(msgspec.Struct, frozen=True, kw_only=True):
    reservation_id: uuid.UUID
    order_id: uuid.UUID
    warehouse: str  # required: incompatible with v1
    lines: tuple[Line, ...]


def test_an_incompatible_change_to_a_published_message_in_place_fails_the_guard() -> None:
    code = with_entry(current(), "catalog.ReserveStock.v1", "command", ReserveStockV2)

    assert problems(load(), code) == [
        "catalog.ReserveStock.v1: new required field warehouse (give it a default, or add a new version)"
    ]


def test_the_same_change_as_a_new_version_beside_the_old_one_passes() -> None:
    code = with_entry(current(), "catalog.ReserveStock.v2", "command", ReserveStockV2)

    assert problems(load(), code) == []


def test_a_version_removed_before_it_is_retired_fails_the_guard() -> None:
    code = with_entry(current(), "catalog.ReserveStock.v2", "command", ReserveStockV2)
    del code["catalog.ReserveStock.v1"]

    assert problems(load(), code) == [
        "catalog.ReserveStock.v1 was removed: keep it until its deprecation window is over, then --retire it"
    ]


def test_a_version_retired_by_its_successor_may_leave_the_code() -> None:
    recorded = load()
    code = with_entry(current(), "catalog.ReserveStock.v2", "command", ReserveStockV2)
    del code["catalog.ReserveStock.v1"]

    retire(recorded, code, "catalog.ReserveStock.v1")

    assert recorded["retired"]["catalog.ReserveStock.v1"] == "superseded by catalog.ReserveStock.v2"
    assert problems(recorded, code) == []
    assert "catalog.ReserveStock.v1" in dump(recorded)  # its last schema stays on record


def test_a_message_only_its_owner_uses_may_leave_the_published_language() -> None:
    """orders' own queries moved to shop.modules.orders.messages: recorded, not a break."""
    recorded = load()

    assert recorded["retired"]["orders.GetOrder.v1"] == "unpublished: orders's own message now"
    assert "orders.GetOrder.v1" not in current()
    assert problems(recorded, current()) == []


def test_a_published_message_of_another_module_cannot_be_unpublished() -> None:
    code = current()
    del code["catalog.ReserveStock.v1"]

    with pytest.raises(SystemExit, match="not orders's"):
        unpublish(load(), code, "catalog.ReserveStock.v1", "orders")
    with pytest.raises(SystemExit, match="still published"):
        unpublish(load(), current(), "orders.PlaceOrder.v1", "orders")


def test_a_message_without_a_successor_cannot_be_retired() -> None:
    code = current()
    del code["catalog.ReserveStock.v1"]

    with pytest.raises(SystemExit, match="no later version"):
        retire(load(), code, "catalog.ReserveStock.v1")


def test_a_kind_change_is_a_break() -> None:
    code = copy.deepcopy(current())
    code["catalog.StockReserved.v1"]["kind"] = "command"

    assert problems(load(), code) == ["catalog.StockReserved.v1 changed from a event to a command"]


# -- consumers keep handling every live version -----------------------------------------------


class PingV1(Command, frozen=True, kw_only=True):
    wire_name: ClassVar[str] = "testing.Ping.v1"


class PingV2(Command, frozen=True, kw_only=True):
    wire_name: ClassVar[str] = "testing.Ping.v2"
    loud: bool = False


class PongedV1(Event, frozen=True, kw_only=True):
    wire_name: ClassVar[str] = "testing.Ponged.v1"


class PongedV2(Event, frozen=True, kw_only=True):
    wire_name: ClassVar[str] = "testing.Ponged.v2"


PINGS = {m.type_name(): m for m in (PingV1, PingV2, PongedV1, PongedV2)}


async def _noop(message: object) -> None:
    return None


def test_every_live_version_of_every_published_message_is_still_handled() -> None:
    modules = [load_module(name) for name in MODULE_NAMES]

    assert unhandled(modules, published_messages()) == []


def test_an_owner_that_handles_only_the_new_version_is_reported() -> None:
    owner, listener = Module("pinger"), Module("listener")
    owner.handles(PingV2)(_noop)
    listener.on(PongedV1)(_noop)
    listener.on(PongedV2)(_noop)

    assert unhandled([owner, listener], PINGS) == ["testing.Ping.v1 is no longer handled by pinger"]


def test_a_subscriber_of_only_the_old_version_of_an_event_is_reported() -> None:
    owner, listener = Module("pinger"), Module("listener")
    owner.handles(PingV1)(_noop)
    owner.handles(PingV2)(_noop)
    listener.on(PongedV1)(_noop)

    assert unhandled([owner, listener], PINGS) == ["testing.Ponged.v2 is no longer handled by listener"]
