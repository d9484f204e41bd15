"""Sagas survive a change of their definition: a step inserted in the middle and one removed
while sagas are RUNNING, WAITING and COMPENSATING, then a restart on the new definition.

Each saga finishes on the steps it started with while its version stays registered; a newer
version takes a saga over only when it agrees with it by step names; otherwise the saga is
PARKED with a clear reason (and nothing run), and an operator's retry finishes it once its
version is registered again. Compensation walks the completed step names, never positions.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from shop.bus.retry import RetryPolicy
from shop.bus.saga import (
    META_KEY,
    Action,
    Saga,
    SagaContext,
    SagaEngine,
    SagaState,
    StepFailed,
    UnknownSaga,
    Wait,
)
from shop.bus.tables import saga_instances
from shop.db import Database, unit_of_work

BOTH = pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)
POLICY = RetryPolicy(base_delay=1.0, max_delay=10.0, multiplier=2.0, jitter=0.0)
T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
V1_STEPS = ["reserve", "pack", "charge", "ship", "notify"]
V2_STEPS = ["reserve", "verify", "charge", "ship", "notify"]  # verify inserted, pack removed


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


class Warehouse:
    """Fake actions: record each call per saga; raise the faults queued for a saga's step."""

    def __init__(self) -> None:
        self.calls: dict[uuid.UUID, list[str]] = defaultdict(list)
        self.faults: dict[tuple[uuid.UUID, str], list[BaseException]] = defaultdict(list)

    def fail(self, saga_id: uuid.UUID, name: str, *errors: BaseException) -> None:
        self.faults[(saga_id, name)].extend(errors)

    def act(self, name: str, result: Any = None) -> Action:
        async def call(ctx: SagaContext) -> Any:
            self.calls[ctx.saga_id].append(name)
            queued = self.faults[(ctx.saga_id, name)]
            if queued:
                raise queued.pop(0)
            return result

        return call


def version_1(w: Warehouse) -> Saga:
    return (
        Saga("voyage")
        .step("reserve", w.act("reserve"), compensate=w.act("unreserve"))
        .step("pack", w.act("pack"), compensate=w.act("unpack"))
        .step(
            "charge",
            w.act("charge", Wait()),
            abort=w.act("void"),
            compensate=w.act("refund"),
            deadline=timedelta(seconds=60),
        )
        .step("ship", w.act("ship"), compensate=w.act("unship"))
        .step("notify", w.act("notify"))
    )


def version_2(w: Warehouse) -> Saga:
    return (
        Saga("voyage", version=2)
        .step("reserve", w.act("reserve"), compensate=w.act("unreserve"))
        .step("verify", w.act("verify"), compensate=w.act("unverify"))
        .step(
            "charge",
            w.act("charge", Wait()),
            abort=w.act("void"),
            compensate=w.act("refund"),
            deadline=timedelta(seconds=60),
        )
        .step("ship", w.act("ship"), compensate=w.act("unship"))
        .step("notify", w.act("notify"))
    )


@pytest.fixture
def server_ready(backend: str, request: pytest.FixtureRequest) -> None:
    if backend == "postgres":
        request.getfixturevalue("postgres_url")


@pytest.fixture
async def db(server_ready: None, make_database: Callable[..., Any]) -> Database:
    database: Database = await make_database("voyages")
    return database


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def warehouse() -> Warehouse:
    return Warehouse()


EngineOf = Callable[..., SagaEngine]


@pytest.fixture
async def engine_of(db: Database, clock: Clock) -> AsyncIterator[EngineOf]:
    """Build an engine of the given definitions on `db` (a process: restarts build another)."""
    engines: list[SagaEngine] = []

    def build(*definitions: Saga) -> SagaEngine:
        engine = SagaEngine(db, definitions, clock=clock, retry=POLICY)
        engines.append(engine)
        return engine

    yield build
    for engine in engines:
        await engine.close()


async def start(engine: SagaEngine, db: Database, saga_id: uuid.UUID | None = None) -> uuid.UUID:
    saga_id = saga_id or uuid.uuid4()
    async with unit_of_work(db):
        await engine.start("voyage", saga_id, {"who": "ada"})
    await engine.drain()
    return saga_id


async def state(engine: SagaEngine, saga_id: uuid.UUID) -> SagaState:
    found = await engine.get(saga_id)
    assert found is not None
    return found


async def done_steps(engine: SagaEngine, saga_id: uuid.UUID) -> list[str]:
    return [entry.step for entry in await engine.timeline(saga_id) if entry.status == "DONE"]


class InFlight:
    """Sagas caught mid-way on version 1, one per situation a deploy can meet."""

    running_pack: uuid.UUID  # RUNNING: pack's outcome unknown, retry pending (reserve done)
    running_reserve: uuid.UUID  # RUNNING: reserve's outcome unknown, nothing done yet
    waiting: uuid.UUID  # WAITING on charge (reserve, pack done)
    compensating: uuid.UUID  # COMPENSATING: ship failed, refund failed once (reserve, pack, charge done)
    compensating_early: uuid.UUID  # COMPENSATING: pack failed, unreserve failed once (reserve done)


async def in_flight_on_version_1(engine: SagaEngine, db: Database, w: Warehouse) -> InFlight:
    sagas = InFlight()
    sagas.running_pack, sagas.running_reserve = uuid.uuid4(), uuid.uuid4()
    sagas.compensating, sagas.compensating_early = uuid.uuid4(), uuid.uuid4()
    w.fail(sagas.running_pack, "pack", RuntimeError("the packer did not answer"))
    w.fail(sagas.running_reserve, "reserve", TimeoutError("stock did not answer"))
    w.fail(sagas.compensating, "ship", StepFailed("NO_COURIER"))
    w.fail(sagas.compensating, "refund", RuntimeError("the bank did not answer"))
    w.fail(sagas.compensating_early, "pack", StepFailed("NO_BOX"))
    w.fail(sagas.compensating_early, "unreserve", RuntimeError("stock did not answer"))
    for saga_id in (sagas.running_pack, sagas.running_reserve, sagas.compensating, sagas.compensating_early):
        await start(engine, db, saga_id)
    sagas.waiting = await start(engine, db)
    assert await engine.complete_step(sagas.compensating, "charge")

    seen = {saga_id: await state(engine, saga_id) for saga_id in vars(sagas).values()}
    assert [(s.status, s.step) for s in seen.values()] == [
        ("RUNNING", "pack"),
        ("RUNNING", "reserve"),
        ("COMPENSATING", "charge"),
        ("COMPENSATING", "reserve"),
        ("WAITING", "charge"),
    ]
    assert w.calls[sagas.compensating] == ["reserve", "pack", "charge", "ship", "refund"]
    return sagas


@BOTH
async def test_sagas_in_flight_finish_on_the_version_they_started_on_and_new_ones_use_the_newest(
    engine_of: EngineOf, db: Database, clock: Clock, warehouse: Warehouse
) -> None:
    old = engine_of(version_1(warehouse))
    sagas = await in_flight_on_version_1(old, db, warehouse)
    await old.close()

    deployed = engine_of(version_1(warehouse), version_2(warehouse))  # the restart
    assert deployed.definition("voyage").version == 2
    clock.now += timedelta(seconds=30)  # the retries are due
    assert await deployed.resume_all() == 4
    for saga_id in (sagas.running_pack, sagas.running_reserve, sagas.waiting):
        assert (await state(deployed, saga_id)).status == "WAITING"
        assert await deployed.complete_step(saga_id, "charge")
        assert (await state(deployed, saga_id)).status == "COMPLETED"
        assert await done_steps(deployed, saga_id) == V1_STEPS
        assert "verify" not in warehouse.calls[saga_id]

    compensated = await state(deployed, sagas.compensating)
    assert (compensated.status, compensated.failure_reason) == ("FAILED", "NO_COURIER")
    assert warehouse.calls[sagas.compensating][-4:] == ["refund", "refund", "unpack", "unreserve"]
    early = await state(deployed, sagas.compensating_early)
    assert (early.status, early.failure_reason) == ("FAILED", "NO_BOX")
    assert warehouse.calls[sagas.compensating_early] == ["reserve", "pack", "unreserve", "unreserve"]

    fresh = await start(deployed, db)
    assert await deployed.complete_step(fresh, "charge")
    assert await done_steps(deployed, fresh) == V2_STEPS


@BOTH
async def test_without_its_version_a_saga_moves_on_when_the_names_agree_else_parks_until_an_operator(
    engine_of: EngineOf, db: Database, clock: Clock, warehouse: Warehouse
) -> None:
    old = engine_of(version_1(warehouse))
    sagas = await in_flight_on_version_1(old, db, warehouse)
    await old.close()
    calls_before = {saga_id: list(calls) for saga_id, calls in warehouse.calls.items()}

    deployed = engine_of(version_2(warehouse))  # version 1 dropped
    clock.now += timedelta(seconds=30)
    await deployed.resume_all()

    # Nothing done yet: the saga runs version 2 from where it stands.
    moved = sagas.running_reserve
    assert (await state(deployed, moved)).status == "WAITING"
    assert await deployed.complete_step(moved, "charge")
    assert await done_steps(deployed, moved) == V2_STEPS
    assert ("voyage", "MIGRATED", "v1 -> v2") in [
        (e.step, e.status, e.detail) for e in await deployed.timeline(moved)
    ]

    # Only reserve to undo, and version 2 has it: compensated by name.
    early = await state(deployed, sagas.compensating_early)
    assert (early.status, early.failure_reason) == ("FAILED", "NO_BOX")
    assert warehouse.calls[sagas.compensating_early][-1] == "unreserve"

    # pack is done but version 2 has no pack: continuing or undoing by version 2 would be wrong.
    for saga_id, why in [
        (sagas.running_pack, "v2 does not continue with pack after them"),
        (sagas.compensating, "v2 has no step pack to undo"),
    ]:
        parked = await state(deployed, saga_id)
        assert (parked.status, parked.failure_reason) == ("PARKED", "DEFINITION_CHANGED")
        last = (await deployed.timeline(saga_id))[-1]
        assert (last.step, last.status) == ("voyage", "PARKED")
        assert last.detail == f"voyage v1 is not registered; {why}"
        assert warehouse.calls[saga_id] == calls_before[saga_id], "a parked saga runs nothing"
    assert [s.id for s in await deployed.list_sagas(status="PARKED")] != []
    assert await deployed.counts(final=False) == {("voyage", "PARKED"): 2, ("voyage", "WAITING"): 1}

    # The saga waiting on pack's successor parks when its outcome arrives (it is not taken).
    assert not await deployed.complete_step(sagas.waiting, "charge")
    assert (await state(deployed, sagas.waiting)).status == "PARKED"
    assert warehouse.calls[sagas.waiting] == calls_before[sagas.waiting]

    # Retry without version 1: resumed, then parked again; still nothing run.
    assert await deployed.retry(sagas.running_pack)
    assert (await state(deployed, sagas.running_pack)).status == "PARKED"
    lines = [(e.status, e.detail) for e in await deployed.timeline(sagas.running_pack)]
    assert lines[-2:] == [("RESUMED", "operator retry"), ("PARKED", lines[-1][1])]
    assert [status for status, _ in lines].count("PARKED") == 2
    assert warehouse.calls[sagas.running_pack] == calls_before[sagas.running_pack]
    await deployed.close()

    # The operator registers version 1 again and retries: each ends on its own steps.
    fixed = engine_of(version_1(warehouse), version_2(warehouse))
    for saga_id in (sagas.running_pack, sagas.compensating, sagas.waiting):
        assert await fixed.retry(saga_id)
    assert (await state(fixed, sagas.running_pack)).status == "WAITING"
    assert await fixed.complete_step(sagas.running_pack, "charge")
    assert await done_steps(fixed, sagas.running_pack) == V1_STEPS
    compensated = await state(fixed, sagas.compensating)
    assert (compensated.status, compensated.failure_reason) == ("FAILED", "NO_COURIER")
    assert warehouse.calls[sagas.compensating][-3:] == ["refund", "unpack", "unreserve"]
    assert (await state(fixed, sagas.waiting)).status == "WAITING"  # back where it parked
    assert await fixed.complete_step(sagas.waiting, "charge")
    assert (await state(fixed, sagas.waiting)).status == "COMPLETED"
    assert await done_steps(fixed, sagas.waiting) == V1_STEPS


async def test_a_saga_stored_before_versions_runs_on_version_1_or_parks_without_it(
    engine_of: EngineOf, db: Database, clock: Clock, warehouse: Warehouse
) -> None:
    old = engine_of(version_1(warehouse))
    kept, dropped = await start(old, db), await start(old, db)
    await old.close()
    async with unit_of_work(db) as uow:  # as written before versions: no version, no names
        for saga_id in (kept, dropped):
            c = saga_instances.c
            data = (await uow.session.execute(sa.select(c.data).where(c.id == saga_id))).scalar_one()
            meta = {k: v for k, v in data[META_KEY].items() if k not in ("version", "done")}
            await uow.session.execute(
                saga_instances.update().where(c.id == saga_id).values(data={**data, META_KEY: meta})
            )

    on_both = engine_of(version_1(warehouse), version_2(warehouse))
    assert await on_both.complete_step(kept, "charge")
    assert await done_steps(on_both, kept) == V1_STEPS

    only_new = engine_of(version_2(warehouse))
    assert not await only_new.complete_step(dropped, "charge")
    parked = await state(only_new, dropped)
    assert (parked.status, parked.failure_reason) == ("PARKED", "DEFINITION_CHANGED")
    detail = (await only_new.timeline(dropped))[-1].detail
    assert detail == "voyage v1 is not registered and the saga was stored without its completed steps"


async def test_a_final_saga_keeps_no_engine_bookkeeping(
    engine_of: EngineOf, db: Database, warehouse: Warehouse
) -> None:
    engine = engine_of(version_1(warehouse))
    saga_id = await start(engine, db)
    async with unit_of_work(db, write=False) as uow:
        c = saga_instances.c
        data = (await uow.session.execute(sa.select(c.data).where(c.id == saga_id))).scalar_one()
    assert data[META_KEY]["version"] == 1
    assert data[META_KEY]["done"] == ["reserve", "pack"]
    assert await engine.complete_step(saga_id, "charge")
    async with unit_of_work(db, write=False) as uow:
        data = (await uow.session.execute(sa.select(c.data).where(c.id == saga_id))).scalar_one()
    assert "version" not in data.get(META_KEY, {})


async def test_versions_are_checked_when_registered_and_started(
    engine_of: EngineOf, db: Database, warehouse: Warehouse
) -> None:
    with pytest.raises(ValueError, match="of version 1"):
        engine_of(version_1(warehouse), version_1(warehouse))
    with pytest.raises(ValueError, match="version must be an int >= 1"):
        Saga("voyage", version=0)
    engine = engine_of(version_2(warehouse))
    with pytest.raises(UnknownSaga, match="of version 1"):
        engine.definition("voyage", 1)
    saga_id = uuid.uuid4()
    async with unit_of_work(db):
        with pytest.raises(UnknownSaga):
            await engine.start(version_1(warehouse), saga_id)
