"""What the inbox claims: a delivered command (sent, published, redriven: it may come again with
the same message id) once, handled once. A local ask is different: the bus makes its envelope for
that ask and hands it to the handler itself, once, so the handler runs in its transaction with no
inbox row. (A request a transport hands over is still claimed: the conformance suite replays the
first reply to a repeated one.)"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from shop.bus.bus import Bus
from shop.bus.messages import Command, new_envelope
from shop.bus.module import Module
from shop.bus.tables import inbox
from shop.bus.transports.base import Outcome
from shop.bus.transports.inprocess import InProcessTransport
from shop.db import Database, current_unit_of_work, unit_of_work

module = Module("tally")
tallies_metadata = sa.MetaData()
tallies = sa.Table(
    "tallies", tallies_metadata, sa.Column("id", sa.Integer, primary_key=True, autoincrement=True)
)


class AddTally(Command, frozen=True, kw_only=True):
    pass


@module.handles(AddTally)
async def add_tally(cmd: AddTally, database: Database) -> int:
    uow = current_unit_of_work()  # the bus's unit of work, writing
    assert uow is not None
    assert uow.database is database
    await uow.session.execute(tallies.insert())
    return int((await uow.session.execute(sa.select(sa.func.count()).select_from(tallies))).scalar_one())


async def _bus(make_database: Any) -> tuple[Bus, Database]:
    database: Database = await make_database("tally", tallies_metadata)
    built = Bus([module], InProcessTransport(), local=["tally"], databases={"tally": database})
    built.bind()
    return built, database


async def _inbox_rows(database: Database) -> int:
    async with unit_of_work(database, write=False) as uow:
        return int((await uow.session.execute(sa.select(sa.func.count()).select_from(inbox))).scalar_one())


async def test_an_ask_of_a_command_runs_in_a_transaction_and_writes_no_inbox_row(make_database: Any) -> None:
    bus, database = await _bus(make_database)
    assert await bus.ask(AddTally()) == 1
    assert await bus.ask(AddTally()) == 2  # a second ask is a second command
    assert await _inbox_rows(database) == 0


async def test_a_delivered_command_is_claimed_once_and_its_redelivery_is_not_handled_again(
    make_database: Any,
) -> None:
    bus, database = await _bus(make_database)
    envelope = new_envelope(AddTally(), consumer="tally.add_tally")

    first = await bus.process("tally", envelope)
    again = await bus.process("tally", envelope)

    assert (first.outcome, again.outcome) == (Outcome.DONE, Outcome.DONE)
    assert await _inbox_rows(database) == 1
    async with unit_of_work(database, write=False) as uow:
        assert (await uow.session.execute(sa.select(sa.func.count()).select_from(tallies))).scalar_one() == 1


async def test_a_delivered_command_keeps_no_reply_and_a_handed_over_request_keeps_its_first(
    make_database: Any,
) -> None:
    """Nobody waits for a delivery's reply: its inbox row records the claim only. A request a
    transport hands over keeps its reply, and a repeat of it gets that reply back."""
    bus, database = await _bus(make_database)
    delivered = new_envelope(AddTally(), consumer="tally.add_tally")
    asked = new_envelope(AddTally(), consumer="tally.add_tally")

    await bus.process("tally", delivered)
    first = await bus.answer("tally", asked)
    repeated = await bus.answer("tally", asked)

    async with unit_of_work(database, write=False) as uow:
        rows = (await uow.session.execute(sa.select(inbox.c.message_id, inbox.c.reply))).all()
    replies = {row[0]: row[1] for row in rows}
    assert replies[delivered.message_id] is None
    assert replies[asked.message_id] is not None
    assert (first, repeated) == (2, 2)
