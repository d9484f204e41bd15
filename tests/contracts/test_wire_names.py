"""Every published message has an explicit, versioned wire name, and renaming its class leaves
the wire alone."""

from __future__ import annotations

import importlib
import pkgutil
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import ClassVar

import pytest

import shop.contracts
from shop.bus.messages import Command, Message, decode_body, new_envelope
from shop.contracts.catalog import Line, ReserveStock

# The saga operator messages are leaving orders' contracts for the generic saga kernel (issue 12);
# they get their wire names where they land.
MOVING: set[str] = set()  # names of messages on their way out of the contracts
CATALOG = Path(shop.contracts.__path__[0]) / "catalog.py"


def contract_messages() -> list[tuple[str, type[Message]]]:
    found = []
    for info in pkgutil.iter_modules(shop.contracts.__path__, "shop.contracts."):
        module = importlib.import_module(info.name)
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, Message) and value.__module__ == info.name:
                found.append((info.name.rsplit(".", 1)[-1], value))
    return found


def reserve() -> ReserveStock:
    return ReserveStock(
        reservation_id=uuid.UUID(int=1),
        order_id=uuid.UUID(int=2),
        lines=(Line(product_id=uuid.UUID(int=3), quantity=2),),
    )


def test_every_published_message_declares_a_wire_name_of_its_module_with_a_version() -> None:
    messages = contract_messages()
    assert len(messages) > 40
    for module, cls in messages:
        if cls.__name__ in MOVING:
            continue
        declared = cls.__dict__.get("wire_name")
        assert declared is not None, f"{cls.__module__}.{cls.__name__} declares no wire_name"
        assert re.fullmatch(rf"{module}\.[A-Z][A-Za-z0-9]*\.v[1-9][0-9]*", declared), declared
        assert cls.type_name() == declared


def test_wire_names_are_unique_across_modules() -> None:
    names = [cls.type_name() for _, cls in contract_messages()]
    assert len(names) == len(set(names))


def test_an_envelope_carries_the_wire_name_not_the_class_name() -> None:
    envelope = new_envelope(reserve())

    assert envelope.type == "catalog.ReserveStock.v1"
    assert decode_body(envelope.type, envelope.body) == reserve()


def test_renaming_a_message_class_changes_neither_its_envelope_type_nor_its_body() -> None:
    # Import catalog's contracts with ReserveStock renamed, in a fresh interpreter.
    renamed = re.sub(r"\bReserveStock\b(?!\.v1)", "ReserveStockCommand", CATALOG.read_text())
    assert "class ReserveStockCommand(" in renamed
    script = f"""
import sys, types, uuid
module = types.ModuleType("shop.contracts.catalog")
sys.modules["shop.contracts.catalog"] = module
exec(compile({renamed!r}, "catalog.py", "exec"), module.__dict__)
from shop.bus.messages import new_envelope
message = module.ReserveStockCommand(
    reservation_id=uuid.UUID(int=1), order_id=uuid.UUID(int=2),
    lines=(module.Line(product_id=uuid.UUID(int=3), quantity=2),))
envelope = new_envelope(message)
print(envelope.type, envelope.body.hex())
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    original = new_envelope(reserve())

    assert out.split() == [original.type, original.body.hex()]


def test_a_wire_name_already_taken_is_refused() -> None:
    with pytest.raises(TypeError, match="already used"):

        class Impostor(Command, frozen=True, kw_only=True):
            wire_name: ClassVar[str] = "catalog.ReserveStock.v1"


def test_a_wire_name_without_module_or_version_is_refused() -> None:
    for bad in ("ReserveStock", "catalog.ReserveStock", "catalog.ReserveStock.v0", "Catalog.Reserve.v1"):
        with pytest.raises(TypeError, match=r"is not <module>\.<Name>\.v<N>"):

            class Unversioned(Command, frozen=True, kw_only=True):
                wire_name: ClassVar[str] = bad
