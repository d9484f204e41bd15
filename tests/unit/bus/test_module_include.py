"""A module's handlers are collected in handlers.py and included by its descriptor, explicitly."""

from __future__ import annotations

from typing import ClassVar

import pytest

from shop.bus.messages import Command, Event
from shop.bus.module import Handlers, Module


class Shelve(Command, frozen=True, kw_only=True):
    wire_name: ClassVar[str] = "testing.Shelve.v1"


class Shelved(Event, frozen=True, kw_only=True):
    wire_name: ClassVar[str] = "testing.Shelved.v1"


async def shelve(cmd: Shelve) -> None:
    return None


async def when_shelved_count(event: Shelved) -> None:
    return None


async def warm_up() -> None:
    return None


def test_included_handlers_and_hooks_are_the_modules_in_declaration_order() -> None:
    handlers = Handlers()
    handlers.handles(Shelve, transactional=False)(shelve)
    handlers.on(Shelved)(when_shelved_count)
    handlers.on_startup(warm_up)
    handlers.background(warm_up)
    handlers.on_shutdown(warm_up)
    module = Module("shelf")

    assert module.handlers == []  # nothing registers by being imported
    module.include(handlers)

    assert [(h.consumer, h.message_type, h.role, h.transactional) for h in module.handlers] == [
        ("shelf.shelve", Shelve, "owner", False),
        ("shelf.when_shelved_count", Shelved, "subscriber", True),
    ]
    assert module.startup_hooks == module.background_tasks == module.shutdown_hooks == [warm_up]


def test_a_command_handled_twice_is_refused_when_included() -> None:
    handlers = Handlers()
    handlers.handles(Shelve)(shelve)
    handlers.handles(Shelve)(when_shelved_count)

    with pytest.raises(ValueError, match="already handles Shelve"):
        Module("shelf").include(handlers)


def test_an_event_cannot_be_owned_nor_a_command_subscribed() -> None:
    handlers = Handlers()

    with pytest.raises(TypeError, match="not a command or query"):
        handlers.handles(Shelved)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not an event"):
        handlers.on(Shelve)  # type: ignore[arg-type]
