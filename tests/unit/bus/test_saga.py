"""The saga engine, driven by a fake clock on real databases (SQLite; PostgreSQL for the core).

The tests' own saga, "trip": book_flight (compensated by cancel_flight), book_hotel
(compensated by cancel_hotel), wait_for_payment (Wait, 60 s deadline, aborted by void_payment),
confirm. Fake actions record their calls and idempotency keys; faults are queued per action.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from prometheus_client import REGISTRY
from sqlalchemy.ext.asyncio import AsyncConnection
from structlog.testing import capture_logs

from shop.bus.breaker import CircuitOpenError
from shop.bus.errors import AskTimeout, HandlerFailed
from shop.bus.retry import RetryPolicy
from shop.bus.saga import (
    NoUnitOfWorkForSaga,
    Saga,
    SagaContext,
    SagaEngine,
    SagaError,
    SagaState,
    StepFailed,
    TimelineEntry,
    Wait,
)
from shop.db import Database, current_unit_of_work, unit_of_work

BOTH = pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)
POLICY = RetryPolicy(base_delay=1.0, max_delay=10.0, multiplier=2.0, jitter=0.0)
T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)

hook_metadata = sa.MetaData()
trip_events = sa.Table(
    "trip_events",
    hook_metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("saga_id", sa.Uuid, nullable=False),
    sa.Column("step", sa.String(100), nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
)


class Crash(BaseException):
    """The process dies in the middle of a step (escapes every `except Exception`)."""


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class Trip:
    """Fake actions: record calls and idempotency keys; raise queued faults."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.keys: dict[str, list[str]] = defaultdict(list)
        self.faults: dict[str, list[BaseException]] = defaultdict(list)
        self.called: dict[str, asyncio.Event] = defaultdict(asyncio.Event)

    def fail(self, name: str, *errors: BaseException) -> None:
        self.faults[name].extend(errors)

    async def _run(self, name: str, ctx: SagaContext, result: Any = None) -> Any:
        self.calls.append(name)
        self.keys[name].append(ctx.idempotency_key)
        self.called[name].set()
        if self.faults[name]:
            raise self.faults[name].pop(0)
        return result

    async def book_flight(self, ctx: SagaContext) -> Any:
        return await self._run("book_flight", ctx, {"flight": "AF123"})

    async def cancel_flight(self, ctx: SagaContext) -> Any:
        return await self._run("cancel_flight", ctx)

    async def book_hotel(self, ctx: SagaContext) -> Any:
        ctx.data["hotel"] = "Ritz"  # in-place changes are persisted too
        return await self._run("book_hotel", ctx)

    async def cancel_hotel(self, ctx: SagaContext) -> Any:
        return await self._run("cancel_hotel", ctx)

    async def wait_for_payment(self, ctx: SagaContext) -> Any:
        return await self._run("wait_for_payment", ctx, Wait({"payment_requested": True}))

    async def void_payment(self, ctx: SagaContext) -> Any:
        return await self._run("void_payment", ctx)

    async def confirm(self, ctx: SagaContext) -> Any:
        return await self._run("confirm", ctx, {"confirmed": True})


def trip_saga(trip: Trip, **options: Any) -> Saga:
    return (
        Saga("trip", **options)
        .step("book_flight", action=trip.book_flight, compensate=trip.cancel_flight)
        .step("book_hotel", action=trip.book_hotel, compensate=trip.cancel_hotel)
        .step(
            "wait_for_payment",
            action=trip.wait_for_payment,
            deadline=lambda ctx: timedelta(seconds=60),
            abort=trip.void_payment,
            timeout_reason="PAYMENT_TIMEOUT",
            timeout_status="CANCELLED",
        )
        .step("confirm", action=trip.confirm)
    )


EngineFactory = Callable[..., SagaEngine]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def trip() -> Trip:
    return Trip()


@pytest.fixture
def server_ready(backend: str, request: pytest.FixtureRequest) -> None:
    """Look the PostgreSQL server up outside the event loop (its fixture uses asyncio.run)."""
    if backend == "postgres":
        request.getfixturevalue("postgres_url")


@pytest.fixture
async def db(server_ready: None, make_database: Callable[..., Any]) -> Database:
    database: Database = await make_database("trips", hook_metadata)
    return database


@pytest.fixture
async def new_engine(db: Database, clock: FakeClock, trip: Trip) -> AsyncIterator[EngineFactory]:
    """Build engines (default: the trip saga on `db`); all are closed after the test."""
    engines: list[SagaEngine] = []

    def build(
        definition: Saga | None = None, *, database: Database | None = None, **options: Any
    ) -> SagaEngine:
        options.setdefault("retry", POLICY)
        engine = SagaEngine(database or db, [definition or trip_saga(trip)], clock=clock, **options)
        engines.append(engine)
        return engine

    yield build
    for engine in engines:
        await engine.close()


@pytest.fixture
def engine(new_engine: EngineFactory) -> SagaEngine:
    return new_engine()


async def start(engine: SagaEngine, db: Database, data: dict[str, Any] | None = None) -> uuid.UUID:
    """Start a trip in a unit of work and let the after-commit advancing finish."""
    saga_id = uuid.uuid4()
    async with unit_of_work(db):
        await engine.start("trip", saga_id, data if data is not None else {"traveller": "ada"})
    await engine.drain()
    return saga_id


async def state(engine: SagaEngine, saga_id: uuid.UUID) -> SagaState:
    found = await engine.get(saga_id)
    assert found is not None
    return found


def pairs(timeline: list[TimelineEntry]) -> list[tuple[str, str]]:
    return [(entry.step, entry.status) for entry in timeline]


def finished(status: str) -> float:
    value = REGISTRY.get_sample_value("shop_sagas_finished_total", {"type": "trip", "status": status})
    return value or 0.0


COMPENSATED_BOTH = [
    ("book_hotel", "COMPENSATING"),
    ("book_hotel", "COMPENSATED"),
    ("book_flight", "COMPENSATING"),
    ("book_flight", "COMPENSATED"),
]


# -- happy path ---------------------------------------------------------------------------


@BOTH
async def test_happy_path_runs_steps_in_order_persists_data_and_completes(
    engine: SagaEngine, db: Database, trip: Trip, clock: FakeClock
) -> None:
    before = finished("COMPLETED")
    saga_id = await start(engine, db)

    waiting = await state(engine, saga_id)
    assert waiting.status == "WAITING"
    assert waiting.step == "wait_for_payment"
    assert waiting.step_deadline == T0 + timedelta(seconds=60)
    assert waiting.step_deadline.tzinfo is not None

    assert await engine.complete_step(saga_id, "wait_for_payment", {"payment_id": "P-1"})

    done = await state(engine, saga_id)
    assert done.status == "COMPLETED"
    assert done.failure_reason is None
    assert done.data == {
        "traveller": "ada",
        "flight": "AF123",
        "hotel": "Ritz",
        "payment_requested": True,
        "payment_id": "P-1",
        "confirmed": True,
    }
    assert done.created_at == T0
    assert done.created_at.tzinfo is not None
    assert trip.calls == ["book_flight", "book_hotel", "wait_for_payment", "confirm"]
    assert pairs(await engine.timeline(saga_id)) == [
        ("trip", "STARTED"),
        ("book_flight", "STARTED"),
        ("book_flight", "DONE"),
        ("book_hotel", "STARTED"),
        ("book_hotel", "DONE"),
        ("wait_for_payment", "STARTED"),
        ("wait_for_payment", "WAITING"),
        ("wait_for_payment", "DONE"),
        ("confirm", "STARTED"),
        ("confirm", "DONE"),
        ("trip", "COMPLETED"),
    ]
    assert finished("COMPLETED") == before + 1


async def test_saga_without_waits_completes_in_the_background_after_commit(
    new_engine: EngineFactory, db: Database, trip: Trip
) -> None:
    definition = (
        Saga("trip")
        .step("book_flight", action=trip.book_flight, compensate=trip.cancel_flight)
        .step("confirm", action=trip.confirm)
    )
    engine = new_engine(definition)
    saga_id = await start(engine, db)

    assert (await state(engine, saga_id)).status == "COMPLETED"
    assert trip.calls == ["book_flight", "confirm"]
    assert not engine.background_tasks


@BOTH
async def test_an_advance_after_this_process_saved_the_saga_reads_no_saga_row(
    engine: SagaEngine, db: Database, trip: Trip, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shop.bus.saga import store

    loads: list[uuid.UUID] = []
    real_load = store.load

    async def counting_load(*args: Any, **kwargs: Any) -> Any:
        loads.append(args[1])
        return await real_load(*args, **kwargs)

    monkeypatch.setattr(store, "load", counting_load)
    saga_id = await start(engine, db)  # started, then advanced after commit up to its wait

    assert loads == []  # every advance began from the row as this process had committed it
    assert trip.calls == ["book_flight", "book_hotel", "wait_for_payment"]
    assert (await state(engine, saga_id)).status == "WAITING"


@BOTH
async def test_a_saga_changed_by_another_writer_since_this_process_saved_it_goes_on_from_the_stored_row(
    engine: SagaEngine, db: Database, trip: Trip
) -> None:
    from shop.bus.tables import saga_instances

    saga_id = uuid.uuid4()
    async with unit_of_work(db) as uow:
        await engine.start("trip", saga_id, {"traveller": "ada"})
        # another writer (a second process; an operator) changes the row before it advances,
        # with a new version as every writer of a saga row does
        c = saga_instances.c
        await uow.session.execute(
            saga_instances.update().where(c.id == saga_id).values(attempts=3, version=c.version + 1)
        )
    await engine.drain()

    found = await state(engine, saga_id)
    # the save from the remembered row failed its version check; the advance read the stored
    # row and went on from it (instead of leaving the saga for the stale-saga timer)
    assert found.status == "WAITING"
    assert trip.calls[-1] == "wait_for_payment"


# -- definitive failure -------------------------------------------------------------------


@BOTH
async def test_step_failed_compensates_completed_steps_in_reverse_and_ends_failed(
    engine: SagaEngine, db: Database, trip: Trip
) -> None:
    before = finished("FAILED")
    trip.fail("wait_for_payment", StepFailed("PAYMENT_DECLINED", detail="card expired"))

    saga_id = await start(engine, db)

    final = await state(engine, saga_id)
    assert final.status == "FAILED"
    assert final.failure_reason == "PAYMENT_DECLINED"
    assert final.step == "wait_for_payment"
    assert trip.calls == ["book_flight", "book_hotel", "wait_for_payment", "cancel_hotel", "cancel_flight"]
    timeline = await engine.timeline(saga_id)
    assert ("wait_for_payment", "FAILED", "PAYMENT_DECLINED: card expired") in [
        (entry.step, entry.status, entry.detail) for entry in timeline
    ]
    step_entries = [pair for pair in pairs(timeline) if pair[0] in ("book_hotel", "book_flight")]
    assert step_entries[-4:] == COMPENSATED_BOTH
    assert pairs(timeline)[-1] == ("trip", "FAILED")
    assert finished("FAILED") == before + 1


async def test_step_that_never_completed_is_not_compensated(
    engine: SagaEngine, db: Database, trip: Trip
) -> None:
    trip.fail("book_hotel", StepFailed("NO_ROOMS", status="REJECTED"))

    saga_id = await start(engine, db)

    final = await state(engine, saga_id)
    assert (final.status, final.failure_reason) == ("REJECTED", "NO_ROOMS")
    assert trip.calls == ["book_flight", "book_hotel", "cancel_flight"]
    assert "cancel_hotel" not in trip.calls


async def test_failure_of_first_step_ends_at_once_without_compensations(
    engine: SagaEngine, db: Database, trip: Trip
) -> None:
    trip.fail("book_flight", StepFailed("SOLD_OUT"))

    saga_id = await start(engine, db)

    assert (await state(engine, saga_id)).status == "FAILED"
    assert trip.calls == ["book_flight"]
    assert pairs(await engine.timeline(saga_id))[-2:] == [("book_flight", "FAILED"), ("trip", "FAILED")]


# -- unknown outcome ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        TimeoutError("no reply"),
        AskTimeout("hotels did not answer"),
        CircuitOpenError("hotels"),
        HandlerFailed("boom", error_type="RuntimeError"),
        OSError("connection reset"),
    ],
    ids=["timeout", "ask-timeout", "circuit-open", "handler-failed", "os-error"],
)
async def test_unknown_outcome_is_retried_after_backoff_with_same_key_and_not_compensated(
    engine: SagaEngine, db: Database, trip: Trip, clock: FakeClock, error: Exception
) -> None:
    trip.fail("book_hotel", error)

    saga_id = await start(engine, db)

    pending = await state(engine, saga_id)
    assert pending.status == "RUNNING"
    assert pending.step == "book_hotel"
    assert pending.attempts == 1
    assert pending.next_attempt_at == T0 + timedelta(seconds=1)
    assert "hotel" not in pending.data  # the failed attempt's in-place change is not kept
    assert trip.calls == ["book_flight", "book_hotel"]  # nothing compensated
    retry = [entry for entry in await engine.timeline(saga_id) if entry.status == "RETRY"]
    assert len(retry) == 1
    assert retry[0].step == "book_hotel"
    assert type(error).__name__ in (retry[0].detail or "")

    await engine.advance(saga_id)  # too early: nothing happens
    assert await engine.tick() == 0
    assert trip.calls == ["book_flight", "book_hotel"]

    clock.advance(1)
    assert await engine.tick() == 1

    after = await state(engine, saga_id)
    assert after.status == "WAITING"
    assert after.attempts == 0
    assert after.data["hotel"] == "Ritz"
    assert trip.keys["book_hotel"] == [f"{saga_id}:book_hotel"] * 2
    assert trip.calls == ["book_flight", "book_hotel", "book_hotel", "wait_for_payment"]


async def test_retry_backoff_grows_and_is_capped(
    engine: SagaEngine, db: Database, trip: Trip, clock: FakeClock
) -> None:
    trip.fail("book_hotel", *[ConnectionError("down")] * 6)
    saga_id = await start(engine, db)

    delays: list[float] = []
    for _ in range(6):
        current = await state(engine, saga_id)
        assert current.next_attempt_at is not None
        delays.append((current.next_attempt_at - clock.now).total_seconds())
        clock.now = current.next_attempt_at
        await engine.tick()

    assert delays == [1, 2, 4, 8, 10, 10]
    assert (await state(engine, saga_id)).status == "WAITING"
    assert set(trip.keys["book_hotel"]) == {f"{saga_id}:book_hotel"}


# -- waiting steps ------------------------------------------------------------------------


async def test_duplicate_complete_step_returns_false_and_changes_nothing(
    engine: SagaEngine, db: Database, trip: Trip
) -> None:
    saga_id = await start(engine, db)
    assert await engine.complete_step(saga_id, "wait_for_payment", {"payment_id": "P-1"})
    completed = await state(engine, saga_id)
    timeline = await engine.timeline(saga_id)

    assert not await engine.complete_step(saga_id, "wait_for_payment", {"payment_id": "P-2"})
    assert not await engine.fail_step(saga_id, "wait_for_payment", "PAYMENT_DECLINED")

    assert await state(engine, saga_id) == completed
    assert await engine.timeline(saga_id) == timeline
    assert trip.calls.count("confirm") == 1


async def test_complete_step_for_another_step_or_unknown_saga_returns_false(
    engine: SagaEngine, db: Database
) -> None:
    saga_id = await start(engine, db)

    assert not await engine.complete_step(saga_id, "book_hotel")
    assert not await engine.complete_step(uuid.uuid4(), "wait_for_payment")
    assert (await state(engine, saga_id)).status == "WAITING"


async def test_fail_step_compensates_and_ends_with_given_status(
    engine: SagaEngine, db: Database, trip: Trip
) -> None:
    saga_id = await start(engine, db)

    assert await engine.fail_step(
        saga_id, "wait_for_payment", "PAYMENT_DECLINED", status="REJECTED", detail="insufficient funds"
    )

    final = await state(engine, saga_id)
    assert (final.status, final.failure_reason) == ("REJECTED", "PAYMENT_DECLINED")
    assert trip.calls[-2:] == ["cancel_hotel", "cancel_flight"]
    assert "void_payment" not in trip.calls  # a definitive failure is not an abandonment
    assert "confirm" not in trip.calls
    assert not await engine.fail_step(saga_id, "wait_for_payment", "PAYMENT_DECLINED")


async def test_complete_step_inside_a_unit_of_work_commits_with_it(
    engine: SagaEngine, db: Database, trip: Trip
) -> None:
    saga_id = await start(engine, db)

    async def handler_that_fails() -> None:
        async with unit_of_work(db):
            assert await engine.complete_step(saga_id, "wait_for_payment")
            raise RuntimeError("the event handler failed")

    with pytest.raises(RuntimeError):
        await handler_that_fails()
    await engine.drain()
    assert (await state(engine, saga_id)).status == "WAITING"

    async with unit_of_work(db):  # e.g. an event handler with its inbox row
        assert await engine.complete_step(saga_id, "wait_for_payment", {"payment_id": "P-9"})
    await engine.drain()

    final = await state(engine, saga_id)
    assert final.status == "COMPLETED"
    assert final.data["payment_id"] == "P-9"


@pytest.mark.parametrize("changed_elsewhere", [False, True], ids=["as-remembered", "changed-elsewhere"])
async def test_an_event_in_a_unit_of_work_starts_from_the_remembered_row_unless_it_changed(
    engine: SagaEngine, db: Database, trip: Trip, monkeypatch: pytest.MonkeyPatch, changed_elsewhere: bool
) -> None:
    """The row this process last committed is the start of the next change; a write since
    (another process, by hand) makes its save fail the version check, and the change is made
    again from the stored row: accepted either way."""
    from shop.bus.saga import store
    from shop.bus.tables import saga_instances

    saga_id = await start(engine, db)
    if changed_elsewhere:
        async with unit_of_work(db) as uow:
            c = saga_instances.c
            await uow.session.execute(
                saga_instances.update().where(c.id == saga_id).values(version=c.version + 1)
            )
    loads = 0
    load = store.load

    async def counting_load(*args: Any, **kwargs: Any) -> Any:
        nonlocal loads
        loads += 1
        return await load(*args, **kwargs)

    monkeypatch.setattr(store, "load", counting_load)
    async with unit_of_work(db):
        assert await engine.complete_step(saga_id, "wait_for_payment", {"payment_id": "P-7"})
    await engine.drain()
    read_back = loads

    final = await state(engine, saga_id)
    assert (final.status, final.data["payment_id"]) == ("COMPLETED", "P-7")
    assert trip.calls == ["book_flight", "book_hotel", "wait_for_payment", "confirm"]
    assert read_back == (1 if changed_elsewhere else 0)


async def test_event_that_resolves_an_unknown_outcome_is_accepted(
    engine: SagaEngine, db: Database, trip: Trip, clock: FakeClock
) -> None:
    trip.fail("wait_for_payment", TimeoutError("psp did not answer"))
    saga_id = await start(engine, db)
    assert (await state(engine, saga_id)).status == "RUNNING"

    assert await engine.complete_step(saga_id, "wait_for_payment", {"payment_id": "P-3"})

    assert (await state(engine, saga_id)).status == "COMPLETED"
    assert trip.calls.count("wait_for_payment") == 1


# -- deadlines ----------------------------------------------------------------------------


async def test_step_deadline_while_waiting_aborts_once_compensates_and_times_out(
    engine: SagaEngine, db: Database, trip: Trip, clock: FakeClock
) -> None:
    saga_id = await start(engine, db)

    clock.advance(59)
    assert await engine.tick() == 0
    assert (await state(engine, saga_id)).status == "WAITING"

    clock.advance(2)
    assert await engine.tick() == 1

    final = await state(engine, saga_id)
    assert (final.status, final.failure_reason) == ("CANCELLED", "PAYMENT_TIMEOUT")
    assert trip.calls[3:] == ["void_payment", "cancel_hotel", "cancel_flight"]
    assert trip.keys["void_payment"] == [f"{saga_id}:wait_for_payment:abort"]
    assert trip.keys["cancel_flight"] == [f"{saga_id}:book_flight:compensate"]
    timeline = pairs(await engine.timeline(saga_id))
    assert ("wait_for_payment", "TIMED_OUT") in timeline
    assert ("wait_for_payment", "ABORTED") in timeline
    assert timeline[-1] == ("trip", "CANCELLED")

    clock.advance(3600)
    assert await engine.tick() == 0
    assert not await engine.complete_step(saga_id, "wait_for_payment")
    assert trip.calls.count("void_payment") == 1


async def test_step_deadline_during_unknown_outcome_aborts_the_step(
    engine: SagaEngine, db: Database, trip: Trip, clock: FakeClock
) -> None:
    trip.fail("wait_for_payment", *[OSError("psp unreachable")] * 100)
    saga_id = await start(engine, db)

    for _ in range(10):
        clock.advance(10)
        await engine.tick()

    final = await state(engine, saga_id)
    assert (final.status, final.failure_reason) == ("CANCELLED", "PAYMENT_TIMEOUT")
    assert trip.calls.count("wait_for_payment") > 2
    assert trip.calls[-3:] == ["void_payment", "cancel_hotel", "cancel_flight"]


async def test_saga_deadline_stops_endless_retries_and_compensates(
    new_engine: EngineFactory, db: Database, trip: Trip, clock: FakeClock
) -> None:
    engine = new_engine(trip_saga(trip, deadline=timedelta(minutes=2)))
    trip.fail("book_hotel", *[ConnectionError("hotels down")] * 1000)
    saga_id = await start(engine, db)
    assert (await state(engine, saga_id)).deadline == T0 + timedelta(minutes=2)

    while clock.now <= T0 + timedelta(minutes=3):
        clock.advance(10)
        await engine.tick()

    final = await state(engine, saga_id)
    assert (final.status, final.failure_reason) == ("FAILED", "DEADLINE_EXCEEDED")
    assert trip.calls.count("book_hotel") > 5
    assert trip.calls[-1] == "cancel_flight"
    assert "cancel_hotel" not in trip.calls
    assert pairs(await engine.timeline(saga_id))[-1] == ("trip", "FAILED")


# -- compensation failures ----------------------------------------------------------------


async def test_compensation_failing_parks_the_saga_and_operator_retry_finishes_it(
    new_engine: EngineFactory, db: Database, trip: Trip, clock: FakeClock
) -> None:
    engine = new_engine(max_compensation_attempts=3)
    trip.fail("wait_for_payment", StepFailed("PAYMENT_DECLINED"))
    trip.fail("cancel_flight", *[OSError("airline down")] * 50)
    saga_id = await start(engine, db)
    assert (await state(engine, saga_id)).status == "COMPENSATING"

    for _ in range(5):
        clock.advance(60)
        await engine.tick()

    parked = await state(engine, saga_id)
    assert parked.status == "COMPENSATION_FAILED"
    assert parked.failure_reason == "PAYMENT_DECLINED"
    assert trip.calls.count("cancel_flight") == 3
    assert trip.calls.count("cancel_hotel") == 1  # compensated once, never again
    assert ("book_flight", "COMPENSATION_FAILED") in pairs(await engine.timeline(saga_id))
    clock.advance(3600)
    assert await engine.tick() == 0  # parked: not retried automatically
    assert await engine.resume_all() == 0

    trip.faults["cancel_flight"].clear()  # the airline is back
    assert await engine.retry(saga_id)

    final = await state(engine, saga_id)
    assert (final.status, final.failure_reason) == ("FAILED", "PAYMENT_DECLINED")
    assert trip.calls.count("cancel_flight") == 4
    assert trip.calls.count("cancel_hotel") == 1
    assert pairs(await engine.timeline(saga_id))[-3:] == [
        ("book_flight", "COMPENSATING"),
        ("book_flight", "COMPENSATED"),
        ("trip", "FAILED"),
    ]
    assert not await engine.retry(saga_id)


# -- cancel -------------------------------------------------------------------------------


async def test_cancel_while_waiting_aborts_compensates_and_ends_cancelled(
    engine: SagaEngine, db: Database, trip: Trip
) -> None:
    saga_id = await start(engine, db)

    assert await engine.cancel(saga_id, "CUSTOMER_CANCELLED")

    final = await state(engine, saga_id)
    assert (final.status, final.failure_reason) == ("CANCELLED", "CUSTOMER_CANCELLED")
    assert trip.calls[3:] == ["void_payment", "cancel_hotel", "cancel_flight"]
    assert not await engine.complete_step(saga_id, "wait_for_payment")


async def test_cancel_of_finished_saga_returns_false(engine: SagaEngine, db: Database, trip: Trip) -> None:
    saga_id = await start(engine, db)
    assert await engine.complete_step(saga_id, "wait_for_payment")
    timeline = await engine.timeline(saga_id)

    assert not await engine.cancel(saga_id, "TOO_LATE")
    assert not await engine.cancel(uuid.uuid4(), "UNKNOWN")

    assert (await state(engine, saga_id)).status == "COMPLETED"
    assert await engine.timeline(saga_id) == timeline
    assert "cancel_flight" not in trip.calls


async def test_cancel_between_steps_does_not_abort_a_step_that_never_started(
    engine: SagaEngine, db: Database, trip: Trip
) -> None:
    trip.fail("book_hotel", StepFailed("X"))  # not reached: the saga is cancelled first
    saga_id = uuid.uuid4()
    async with unit_of_work(db):
        await engine.start("trip", saga_id, {})
        assert not engine.background_tasks
    # cancelled before the after-commit advancing got to run a step
    assert await engine.cancel(saga_id, "CUSTOMER_CANCELLED")
    await engine.drain()

    final = await state(engine, saga_id)
    assert (final.status, final.failure_reason) == ("CANCELLED", "CUSTOMER_CANCELLED")
    assert trip.calls == []
    # the first step was claimed with the saga's insert; the cancel took the claim back
    assert pairs(await engine.timeline(saga_id)) == [
        ("trip", "STARTED"),
        ("book_flight", "STARTED"),
        ("book_flight", "CANCELLED"),
        ("trip", "CANCELLED"),
    ]


def guarded_trip_saga(trip: Trip) -> Saga:
    """A trip whose first step has an abort (as the order saga's reserve_stock has)."""
    return (
        Saga("trip")
        .step("book_flight", action=trip.book_flight, abort=trip.cancel_flight)
        .step("confirm", action=trip.confirm)
    )


async def started_guarded_trip(engine: SagaEngine, db: Database) -> uuid.UUID:
    """A guarded trip started in a unit of work; the advancing its commit scheduled has not
    run yet (its first step is claimed, not run)."""
    saga_id = uuid.uuid4()
    async with unit_of_work(db):
        await engine.start("trip", saga_id, {})
    return saga_id


@pytest.mark.parametrize("joined", [False, True], ids=["own-transaction", "caller-transaction"])
async def test_a_cancel_before_the_first_step_ran_neither_runs_nor_aborts_it(
    new_engine: EngineFactory, db: Database, trip: Trip, joined: bool
) -> None:
    engine = new_engine(guarded_trip_saga(trip))
    saga_id = await started_guarded_trip(engine, db)
    # the advancing scheduled by the commit has not run yet: cancel now, as orders does
    # (inside its own unit of work) or on its own
    if joined:
        async with unit_of_work(db):
            assert await engine.cancel(saga_id, "CUSTOMER_CANCELLED")
    else:
        assert await engine.cancel(saga_id, "CUSTOMER_CANCELLED")
    await engine.drain()

    assert (await state(engine, saga_id)).status == "CANCELLED"
    assert trip.calls == []  # book_flight never ran, so cancel_flight (its abort) had nothing to undo


async def test_a_first_step_claimed_with_the_saga_runs_once_and_reads_as_started_then_done(
    new_engine: EngineFactory, db: Database, trip: Trip
) -> None:
    engine = new_engine(guarded_trip_saga(trip))
    saga_id = await started_guarded_trip(engine, db)
    await engine.drain()

    final = await state(engine, saga_id)
    assert final.status == "COMPLETED"
    assert trip.calls == ["book_flight", "confirm"]
    assert pairs(await engine.timeline(saga_id))[:3] == [
        ("trip", "STARTED"),
        ("book_flight", "STARTED"),
        ("book_flight", "DONE"),
    ]


async def test_an_outcome_reported_for_a_claimed_first_step_that_never_ran_is_refused_and_it_runs_once(
    new_engine: EngineFactory, db: Database, trip: Trip
) -> None:
    engine = new_engine(guarded_trip_saga(trip))
    saga_id = await started_guarded_trip(engine, db)
    async with unit_of_work(db):  # before the advancing ran it: nothing ran to report on
        assert not await engine.complete_step(saga_id, "book_flight", {"flight": "forged"})
    await engine.drain()

    final = await state(engine, saga_id)
    assert final.status == "COMPLETED"
    assert final.data["flight"] == "AF123"
    assert trip.calls == ["book_flight", "confirm"]


async def test_a_first_step_claimed_before_a_crash_counts_as_started_and_its_abort_runs(
    new_engine: EngineFactory, db: Database, trip: Trip
) -> None:
    """The claim is in the database; the mark that says "not run yet" was this process's own.
    After a restart a cancel cannot know whether the action ran, so it aborts it (aborts are
    idempotent)."""
    crashed = new_engine(guarded_trip_saga(trip))
    saga_id = await started_guarded_trip(crashed, db)
    await crashed.close()  # the process died before its advancing ran the step

    restarted = new_engine(guarded_trip_saga(trip))
    assert await restarted.cancel(saga_id, "CUSTOMER_CANCELLED")
    await restarted.drain()

    assert (await state(restarted, saga_id)).status == "CANCELLED"
    assert trip.calls == ["cancel_flight"]


# -- crash and resume ---------------------------------------------------------------------


async def crash_while_advancing(new_engine: EngineFactory, db: Database) -> uuid.UUID:
    """Start a trip on an engine whose advancing dies of a `Crash`, then shut that engine down."""
    first = new_engine()
    saga_id = uuid.uuid4()
    with capture_logs() as logs:
        async with unit_of_work(db):
            await first.start("trip", saga_id, {"traveller": "ada"})
        await first.drain()  # the after-commit advancing: the Crash escapes advance() there
    errors = [entry for entry in logs if entry["log_level"] == "error"]
    assert [entry["event"] for entry in errors] == ["saga.background_crashed"]  # logged, not lost
    await first.close()  # the process is gone; nothing of it survives but the database
    return saga_id


@BOTH
async def test_crash_mid_step_then_a_new_engine_resumes_from_the_database(
    new_engine: EngineFactory, db: Database, trip: Trip
) -> None:
    trip.fail("book_hotel", Crash())
    saga_id = await crash_while_advancing(new_engine, db)
    assert trip.calls == ["book_flight", "book_hotel"]

    restarted_db = Database(db.module, db.url)
    try:
        second = new_engine(database=restarted_db)
        assert await second.resume_all() == 1
        assert (await state(second, saga_id)).status == "WAITING"
        assert await second.complete_step(saga_id, "wait_for_payment")

        final = await state(second, saga_id)
        assert final.status == "COMPLETED"
        assert final.data["flight"] == "AF123"
        assert trip.calls.count("book_flight") == 1
        assert trip.keys["book_hotel"] == [f"{saga_id}:book_hotel"] * 2
        timeline = pairs(await second.timeline(saga_id))
        assert timeline.count(("book_hotel", "STARTED")) == 2
        assert timeline.count(("book_flight", "DONE")) == 1
    finally:
        await restarted_db.dispose()


async def test_crash_during_compensation_resumes_without_repeating_finished_compensations(
    new_engine: EngineFactory, db: Database, trip: Trip
) -> None:
    trip.fail("wait_for_payment", StepFailed("PAYMENT_DECLINED"))
    trip.fail("cancel_flight", Crash())
    saga_id = await crash_while_advancing(new_engine, db)
    assert (await state(new_engine(), saga_id)).status == "COMPENSATING"

    second = new_engine()
    await second.resume_all()

    assert (await state(second, saga_id)).status == "FAILED"
    assert trip.calls.count("cancel_hotel") == 1
    assert trip.calls.count("cancel_flight") == 2


async def test_a_crash_escapes_advance_and_leaves_the_step_to_run_again(
    new_engine: EngineFactory, db: Database, trip: Trip
) -> None:
    trip.fail("book_hotel", Crash(), Crash())
    saga_id = await crash_while_advancing(new_engine, db)
    engine = new_engine()

    with pytest.raises(Crash):
        await engine.advance(saga_id)

    stuck = await state(engine, saga_id)
    assert (stuck.status, stuck.step, stuck.attempts) == ("RUNNING", "book_hotel", 0)
    assert (await engine.advance(saga_id) or stuck).status == "WAITING"
    assert trip.keys["book_hotel"] == [f"{saga_id}:book_hotel"] * 3


async def test_stale_running_saga_is_picked_up_by_tick(
    new_engine: EngineFactory, db: Database, trip: Trip, clock: FakeClock
) -> None:
    trip.fail("book_hotel", Crash())
    saga_id = await crash_while_advancing(new_engine, db)

    other = new_engine(stale_after=timedelta(minutes=5))  # another live process
    assert await other.tick() == 0
    clock.advance(301)
    assert await other.tick() == 1
    assert (await state(other, saga_id)).status == "WAITING"


# -- start --------------------------------------------------------------------------------


async def test_start_outside_a_unit_of_work_raises(engine: SagaEngine) -> None:
    with pytest.raises(NoUnitOfWorkForSaga, match="unit of work"):
        await engine.start("trip", uuid.uuid4(), {})


async def test_start_in_a_unit_of_work_that_rolls_back_leaves_no_saga(
    engine: SagaEngine, db: Database, trip: Trip
) -> None:
    saga_id = uuid.uuid4()

    async def place_order_that_fails() -> None:
        async with unit_of_work(db):
            await engine.start("trip", saga_id, {})
            raise RuntimeError("the order could not be saved")

    with pytest.raises(RuntimeError):
        await place_order_that_fails()
    await engine.drain()

    assert await engine.get(saga_id) is None
    assert await engine.timeline(saga_id) == []
    assert trip.calls == []


async def test_start_twice_with_the_same_id_starts_one_saga(
    engine: SagaEngine, db: Database, trip: Trip
) -> None:
    saga_id = uuid.uuid4()
    for _ in range(2):
        async with unit_of_work(db):
            await engine.start("trip", saga_id, {})
        await engine.drain()

    assert trip.calls == ["book_flight", "book_hotel", "wait_for_payment"]
    assert pairs(await engine.timeline(saga_id)).count(("trip", "STARTED")) == 1


async def test_start_rejects_unknown_saga_and_non_json_data(engine: SagaEngine, db: Database) -> None:
    async with unit_of_work(db):
        with pytest.raises(SagaError, match="nope"):
            await engine.start("nope", uuid.uuid4(), {})
        with pytest.raises(TypeError):
            await engine.start("trip", uuid.uuid4(), {"when": datetime.now(UTC)})


async def test_advance_inside_a_unit_of_work_on_the_saga_database_is_refused(
    engine: SagaEngine, db: Database
) -> None:
    async with unit_of_work(db):
        with pytest.raises(SagaError, match="unit of work"):
            await engine.advance(uuid.uuid4())


# -- hooks --------------------------------------------------------------------------------


@BOTH
async def test_hooks_write_in_the_transaction_that_persists_the_state(
    new_engine: EngineFactory, db: Database, trip: Trip
) -> None:
    finishes: list[tuple[str, str | None, dict[str, Any]]] = []

    async def on_step(ctx: SagaContext, step: str, status: str, session: AsyncConnection) -> None:
        uow = current_unit_of_work()
        assert uow is not None
        assert uow.session is session  # so bus.send/publish write to this transaction's outbox
        await session.execute(trip_events.insert().values(saga_id=ctx.saga_id, step=step, status=status))

    async def on_finish(ctx: SagaContext, status: str, reason: str | None, session: AsyncConnection) -> None:
        finishes.append((status, reason, ctx.data))
        await session.execute(trip_events.insert().values(saga_id=ctx.saga_id, step="*", status=status))

    engine = new_engine(trip_saga(trip, on_step=on_step, on_finish=on_finish))
    trip.fail("wait_for_payment", StepFailed("PAYMENT_DECLINED"))
    saga_id = await start(engine, db)

    async with unit_of_work(db, write=False) as uow:
        rows = (
            await uow.session.execute(
                sa.select(trip_events.c.step, trip_events.c.status)
                .where(trip_events.c.saga_id == saga_id)
                .order_by(trip_events.c.id)
            )
        ).all()
    assert [tuple(row) for row in rows] == [
        ("book_flight", "STARTED"),
        ("book_flight", "DONE"),
        ("book_hotel", "STARTED"),
        ("book_hotel", "DONE"),
        ("wait_for_payment", "STARTED"),
        ("wait_for_payment", "FAILED"),
        *COMPENSATED_BOTH,
        ("*", "FAILED"),
    ]
    data = {"traveller": "ada", "flight": "AF123", "hotel": "Ritz"}
    assert finishes == [("FAILED", "PAYMENT_DECLINED", data)]


async def test_a_failing_hook_rolls_back_the_step_and_the_error_is_logged(
    new_engine: EngineFactory, db: Database, trip: Trip
) -> None:
    broken = {"book_flight": True}

    async def on_step(ctx: SagaContext, step: str, status: str, session: AsyncConnection) -> None:
        await session.execute(trip_events.insert().values(saga_id=ctx.saga_id, step=step, status=status))
        if status == "DONE" and broken.get(step):
            raise RuntimeError("hook table is locked")

    engine = new_engine(trip_saga(trip, on_step=on_step))
    with capture_logs() as logs:
        saga_id = await start(engine, db)
    assert any(entry["event"] == "saga.advance_failed" and entry["log_level"] == "error" for entry in logs)

    stuck = await state(engine, saga_id)
    assert (stuck.status, stuck.step) == ("RUNNING", "book_flight")
    assert "flight" not in stuck.data
    assert ("book_flight", "DONE") not in pairs(await engine.timeline(saga_id))
    async with unit_of_work(db, write=False) as uow:
        statuses = (await uow.session.execute(sa.select(trip_events.c.status))).scalars().all()
    assert list(statuses) == ["STARTED"]  # the DONE row went with the rolled-back transaction

    broken.clear()
    await engine.advance(saga_id)
    assert (await state(engine, saga_id)).status == "WAITING"
    assert trip.keys["book_flight"] == [f"{saga_id}:book_flight"] * 2


# -- queries, context, loop, definitions --------------------------------------------------


async def test_list_filters_by_status_and_pages_newest_first(
    engine: SagaEngine, db: Database, trip: Trip, clock: FakeClock
) -> None:
    ids = []
    for _ in range(3):
        ids.append(await start(engine, db))
        clock.advance(1)
    assert await engine.cancel(ids[0], "CUSTOMER_CANCELLED")

    waiting = await engine.list_sagas(status="WAITING")
    assert [saga.id for saga in waiting] == [ids[2], ids[1]]
    page1 = await engine.list_sagas(limit=2)
    page2 = await engine.list_sagas(limit=2, after=page1[-1].id)
    assert [saga.id for saga in page1 + page2] == [ids[2], ids[1], ids[0]]
    assert await engine.list_sagas(status="COMPLETED") == []


def test_context_keys_are_stable_and_distinct_per_phase() -> None:
    saga_id = uuid.uuid4()
    action = SagaContext(saga_id, "trip", "book_hotel", {})
    again = SagaContext(saga_id, "trip", "book_hotel", {"x": 1}, attempt=3)
    undo = SagaContext(saga_id, "trip", "book_hotel", {}, phase="compensate")

    assert action.idempotency_key == f"{saga_id}:book_hotel"
    assert action.message_id() == again.message_id()
    assert action.message_id("sms") == again.message_id("sms") != action.message_id()
    assert undo.message_id() != action.message_id()
    assert action.message_id().version == 5


async def test_run_loop_drives_timers_until_cancelled(
    engine: SagaEngine, db: Database, trip: Trip, clock: FakeClock
) -> None:
    trip.fail("book_hotel", TimeoutError())
    saga_id = await start(engine, db)
    clock.advance(1)
    passes: list[int] = []
    two_passes = asyncio.Event()
    tick = engine.tick

    async def counted_tick() -> int:
        advanced = await tick()
        passes.append(advanced)
        if len(passes) == 2:
            two_passes.set()  # the loop goes to sleep right after this returns
        return advanced

    engine.tick = counted_tick  # type: ignore[method-assign]
    loop = asyncio.create_task(engine.run(interval=0.001))
    await asyncio.wait_for(two_passes.wait(), timeout=10)
    loop.cancel()
    with pytest.raises(asyncio.CancelledError):
        await loop

    assert passes[:2] == [1, 0]
    assert trip.calls.count("book_hotel") == 2
    assert (await state(engine, saga_id)).status == "WAITING"


def test_definitions_are_immutable_and_validated(trip: Trip) -> None:
    base = Saga("trip").step("book_flight", action=trip.book_flight)
    longer = base.step("confirm", action=trip.confirm)

    assert [step.name for step in base.steps] == ["book_flight"]
    assert [step.name for step in longer.steps] == ["book_flight", "confirm"]
    with pytest.raises(ValueError, match="already has a step"):
        longer.step("confirm", action=trip.confirm)
    with pytest.raises(ValueError, match="not a final status"):
        base.step("pay", action=trip.confirm, timeout_status="WAITING")
    with pytest.raises(ValueError, match="not a final status"):
        StepFailed("X", status="RUNNING")


async def test_engine_rejects_duplicate_and_empty_definitions(db: Database, trip: Trip) -> None:
    with pytest.raises(ValueError, match="two saga definitions"):
        SagaEngine(db, [trip_saga(trip), trip_saga(trip)])
    with pytest.raises(ValueError, match="no steps"):
        SagaEngine(db, [Saga("empty")])


@BOTH
async def test_overdue_sagas_are_listed_and_counted_until_the_timers_catch_up(
    engine: SagaEngine, db: Database, trip: Trip, clock: FakeClock
) -> None:
    waiting = []
    for _ in range(2):
        waiting.append(await start(engine, db))
        clock.advance(1)
    trip.fail("book_flight", StepFailed("NO_SEATS"))
    failed = await start(engine, db)
    assert await engine.counts(final=False) == {("trip", "WAITING"): 2}
    assert await engine.counts() == {("trip", "WAITING"): 2, ("trip", "FAILED"): 1}
    assert await engine.list_sagas(overdue=True) == []
    assert await engine.overdue_counts() == {}

    clock.advance(60)  # past both payment steps' deadlines; no tick yet (the timers are behind)
    overdue = await engine.list_sagas(overdue=True)
    assert sorted(saga.id for saga in overdue) == sorted(waiting)
    assert failed not in [saga.id for saga in overdue]
    assert [saga.id for saga in await engine.list_sagas(overdue=True, limit=1)] == [waiting[1]]
    assert await engine.overdue_counts() == {"trip": 2}

    assert await engine.tick() == 2
    assert await engine.list_sagas(overdue=True) == []
    assert await engine.overdue_counts() == {}
    assert await engine.counts() == {("trip", "CANCELLED"): 2, ("trip", "FAILED"): 1}
    assert engine.saga_types == ["trip"]


# -- local steps run inline -----------------------------------------------------------------


def stock_saga(trip: Trip, note: Callable[[SagaContext], Any], *, remote_waits: bool = False) -> Saga:
    """A remote step ("reserve", or "pay" that waits for an event), then a local one ("note")."""

    async def pay(ctx: SagaContext) -> Wait:
        trip.calls.append("pay")
        return Wait()

    first = ("pay", pay, None) if remote_waits else ("reserve", trip.book_flight, trip.cancel_flight)
    return (
        Saga("stock")
        .step(first[0], action=first[1], compensate=first[2])
        .step("note", action=note, local=True)
    )


async def start_stock(engine: SagaEngine, db: Database) -> uuid.UUID:
    saga_id = uuid.uuid4()
    async with unit_of_work(db):
        await engine.start("stock", saga_id)
    await engine.drain()
    return saga_id


async def noted(db: Database, saga_id: uuid.UUID) -> list[str]:
    async with unit_of_work(db, write=False) as uow:
        rows = await uow.session.execute(
            sa.select(trip_events.c.status).where(trip_events.c.saga_id == saga_id)
        )
        return [r[0] for r in rows]


def counting_units_of_work(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Every unit of work the engine opens (True: a writing one)."""
    from shop.bus.saga import engine as engine_module

    opened: list[bool] = []
    real = engine_module.unit_of_work

    def counting(database: Database, *, write: bool = True) -> Any:
        opened.append(write)
        return real(database, write=write)

    monkeypatch.setattr(engine_module, "unit_of_work", counting)
    return opened


async def note_in_transaction(ctx: SagaContext) -> None:
    assert ctx.uow is not None
    await ctx.uow.session.execute(
        trip_events.insert().values(saga_id=ctx.saga_id, step="note", status="noted")
    )


@BOTH
async def test_a_local_step_commits_with_the_outcome_of_the_remote_step_before_it(
    new_engine: EngineFactory, db: Database, trip: Trip, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = new_engine(stock_saga(trip, note_in_transaction))
    opened = counting_units_of_work(monkeypatch)
    saga_id = await start_stock(engine, db)

    assert (await state(engine, saga_id)).status == "COMPLETED"
    assert await noted(db, saga_id) == ["noted"]
    # "reserve" was claimed with the saga's insert (the caller's unit of work, not counted
    # here); then reserve's outcome with all of "note" (was: a claim of its own and one more)
    assert opened == [True]
    assert pairs(await engine.timeline(saga_id)) == [
        ("stock", "STARTED"),
        ("reserve", "STARTED"),
        ("reserve", "DONE"),
        ("note", "STARTED"),
        ("note", "DONE"),
        ("stock", "COMPLETED"),
    ]


@BOTH
async def test_a_failing_inline_local_step_is_rolled_back_alone_and_recorded_as_on_its_own(
    new_engine: EngineFactory, db: Database, trip: Trip
) -> None:
    attempts: list[int] = []

    async def note_that_refuses(ctx: SagaContext) -> None:
        attempts.append(ctx.attempt)
        await note_in_transaction(ctx)  # written, then rolled back with the step
        raise StepFailed("NOTE_REFUSED", detail="no")

    engine = new_engine(stock_saga(trip, note_that_refuses))
    saga_id = await start_stock(engine, db)

    final = await state(engine, saga_id)
    assert final.status == "FAILED"
    assert final.failure_reason == "NOTE_REFUSED"
    assert await noted(db, saga_id) == []  # neither try of the step left its write
    assert trip.calls == ["book_flight", "cancel_flight"]  # reserve compensated, once
    assert attempts == [1, 1]  # inline (rolled back), then on its own: the same first attempt
    assert pairs(await engine.timeline(saga_id)) == [
        ("stock", "STARTED"),
        ("reserve", "STARTED"),
        ("reserve", "DONE"),
        ("note", "STARTED"),
        ("note", "FAILED"),
        ("stock", "COMPENSATING"),
        ("reserve", "COMPENSATING"),
        ("reserve", "COMPENSATED"),
        ("stock", "FAILED"),
    ]


@BOTH
async def test_a_local_step_after_an_awaited_event_runs_in_the_event_handlers_transaction(
    new_engine: EngineFactory, db: Database, trip: Trip
) -> None:
    engine = new_engine(stock_saga(trip, note_in_transaction, remote_waits=True))
    saga_id = await start_stock(engine, db)
    assert (await state(engine, saga_id)).status == "WAITING"

    async def handler_that_fails() -> None:
        async with unit_of_work(db):
            assert await engine.complete_step(saga_id, "pay")
            raise RuntimeError("the event handler failed after it")

    with pytest.raises(RuntimeError):
        await handler_that_fails()
    assert (await state(engine, saga_id)).status == "WAITING"
    assert await noted(db, saga_id) == []  # the local step's write went with the handler's

    async with unit_of_work(db) as uow:  # e.g. the event handler with its inbox row
        assert await engine.complete_step(saga_id, "pay")
        inside = await uow.session.execute(
            sa.select(trip_events.c.status).where(trip_events.c.saga_id == saga_id)
        )
        assert [r[0] for r in inside] == ["noted"]  # already, in the handler's transaction
    assert not engine.background_tasks  # nothing left to advance after the commit
    assert (await state(engine, saga_id)).status == "COMPLETED"


def lookup_saga(trip: Trip, look: Callable[[SagaContext], Any]) -> Saga:
    """A remote step ("reserve"), a reads-only one ("look"), then a local one ("note")."""
    return (
        Saga("stock")
        .step("reserve", action=trip.book_flight, compensate=trip.cancel_flight)
        .step("look", action=look, reads_only=True, deadline=timedelta(seconds=60))
        .step("note", action=note_in_transaction, local=True)
    )


@BOTH
async def test_a_reads_only_step_runs_before_the_outcome_before_it_is_saved_and_both_are_saved_together(
    new_engine: EngineFactory, db: Database, trip: Trip, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def look(ctx: SagaContext) -> dict[str, Any]:
        trip.calls.append("look")
        assert ctx.data["flight"] == "AF123"  # the outcome before it, not saved yet
        return {"seen": True}

    engine = new_engine(lookup_saga(trip, look))
    opened = counting_units_of_work(monkeypatch)
    saga_id = await start_stock(engine, db)

    final = await state(engine, saga_id)
    assert final.status == "COMPLETED"
    assert final.data["seen"] is True
    assert trip.calls == ["book_flight", "look"]
    assert await noted(db, saga_id) == ["noted"]
    # "reserve" claimed with the saga's insert; then reserve's and look's outcomes with all of
    # "note" (was: a claim of its own and two more)
    assert opened == [True]
    assert pairs(await engine.timeline(saga_id)) == [
        ("stock", "STARTED"),
        ("reserve", "STARTED"),
        ("reserve", "DONE"),
        ("look", "STARTED"),
        ("look", "DONE"),
        ("note", "STARTED"),
        ("note", "DONE"),
        ("stock", "COMPLETED"),
    ]


@BOTH
async def test_a_reads_only_step_that_fails_for_now_is_retried_later_as_any_step(
    new_engine: EngineFactory, db: Database, trip: Trip, clock: FakeClock
) -> None:
    looks: list[int] = []

    async def look(ctx: SagaContext) -> None:
        looks.append(ctx.attempt)
        if len(looks) == 1:
            raise AskTimeout("users did not answer")

    engine = new_engine(lookup_saga(trip, look))
    saga_id = await start_stock(engine, db)

    waiting = await state(engine, saga_id)
    assert (waiting.status, waiting.step) == ("RUNNING", "look")  # reserve's outcome is kept
    assert waiting.data["flight"] == "AF123"
    clock.advance(1.5)
    await engine.advance(saga_id)

    assert (await state(engine, saga_id)).status == "COMPLETED"
    assert looks == [1, 2]
    assert trip.calls == ["book_flight"]  # reserve ran once
    assert pairs(await engine.timeline(saga_id))[1:7] == [
        ("reserve", "STARTED"),
        ("reserve", "DONE"),
        ("look", "STARTED"),
        ("look", "RETRY"),
        ("look", "STARTED"),
        ("look", "DONE"),
    ]


@BOTH
async def test_a_reads_only_step_that_refuses_compensates_the_step_before_it(
    new_engine: EngineFactory, db: Database, trip: Trip
) -> None:
    async def look(ctx: SagaContext) -> None:
        raise StepFailed("NO_ADDRESS", detail="unknown")

    engine = new_engine(lookup_saga(trip, look))
    saga_id = await start_stock(engine, db)

    final = await state(engine, saga_id)
    assert (final.status, final.failure_reason) == ("FAILED", "NO_ADDRESS")
    assert trip.calls == ["book_flight", "cancel_flight"]
    assert await noted(db, saga_id) == []
    assert pairs(await engine.timeline(saga_id))[1:6] == [
        ("reserve", "STARTED"),
        ("reserve", "DONE"),
        ("look", "STARTED"),
        ("look", "FAILED"),
        ("stock", "COMPENSATING"),
    ]


def test_a_step_cannot_be_both_local_and_reads_only(trip: Trip) -> None:
    with pytest.raises(ValueError, match="reads_only"):
        Saga("stock").step("look", action=trip.confirm, local=True, reads_only=True)
