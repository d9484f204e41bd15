"""The saga's pure transitions, on a row in memory: no database, no clock, no engine."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shop.bus.saga import Saga, SagaContext, SagaStatus, StepStatus
from shop.bus.saga import transitions as t
from shop.bus.saga.state import SagaRow
from shop.bus.saga.versions import Resolution, Versions, resolve

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


async def _noop(ctx: SagaContext) -> None:
    return None


TRIP = (
    Saga("trip", deadline=timedelta(hours=1), timeout_reason="TRIP_TOO_SLOW")
    .step("flight", _noop, compensate=_noop, abort=_noop, deadline=timedelta(minutes=5))
    .step("check", _noop)
    .step("hotel", _noop, compensate=_noop, deadline=timedelta(minutes=2), timeout_status="CANCELLED")
    .step("confirm", _noop)
)


def row_at(step: str, status: str = SagaStatus.RUNNING, **meta: Any) -> SagaRow:
    index = TRIP.index_of(step)
    assert index is not None
    return SagaRow(
        id=uuid.uuid4(),
        type="trip",
        status=status,
        step=step,
        step_index=index,
        data={"who": "ada"},
        meta=dict(meta),
        failure_reason=None,
        step_deadline=None,
        deadline=None,
        attempts=0,
        next_attempt_at=None,
        version=3,
        created_at=T0,
        updated_at=T0,
        completed=[step.name for step in TRIP.steps[:index]],
    )


def statuses(change: t.Change) -> list[tuple[str, str]]:
    return [(event.step, event.status) for event in change.events]


def test_a_done_step_moves_on_to_the_next_and_claims_it_with_its_deadline() -> None:
    row = row_at("check", started=True)
    change = t.step_done(TRIP, row, TRIP.steps[1], {"who": "ada", "ok": True}, claim_at=T0)
    assert (row.status, row.step, row.step_index) == (SagaStatus.RUNNING, "hotel", 2)
    assert row.data == {"who": "ada", "ok": True}
    assert row.meta == {"started": True}
    assert row.step_deadline == T0 + timedelta(minutes=2)
    assert change.claims_next
    assert statuses(change) == [("check", StepStatus.DONE), ("hotel", StepStatus.STARTED)]


def test_a_done_step_without_a_claim_leaves_the_next_one_unstarted() -> None:
    row = row_at("flight", started=True)
    change = t.step_done(TRIP, row, TRIP.steps[0], row.data)
    assert (row.step, row.meta, row.step_deadline, change.claims_next) == ("check", {}, None, False)


def test_the_last_step_done_completes_the_saga() -> None:
    row = row_at("confirm", started=True)
    change = t.step_done(TRIP, row, TRIP.steps[3], row.data, claim_at=T0)
    assert (row.status, row.step) == (SagaStatus.COMPLETED, "confirm")
    assert change.finish == t.Finish(SagaStatus.COMPLETED, None)
    assert statuses(change) == [("confirm", StepStatus.DONE), ("trip", SagaStatus.COMPLETED)]
    assert not change.claims_next


def test_a_failed_step_compensates_the_completed_ones_with_a_compensation() -> None:
    row = row_at("hotel", started=True)
    change = t.step_failed(TRIP, row, TRIP.steps[2], row.data, "NO_ROOM", "FAILED", "full")
    assert row.status == SagaStatus.COMPENSATING
    assert row.failure_reason == "NO_ROOM"
    assert row.meta == {"outcome": "FAILED", "failed_step": "hotel"}
    assert statuses(change) == [("hotel", StepStatus.FAILED), ("trip", SagaStatus.COMPENSATING)]
    assert change.events[0].detail == "NO_ROOM: full"
    assert t.next_compensation(TRIP, row) == (0, TRIP.steps[0])  # flight; check has nothing to undo


def test_a_failure_with_nothing_to_undo_ends_the_saga_at_once() -> None:
    row = row_at("flight", started=True)
    change = t.step_failed(TRIP, row, TRIP.steps[0], row.data, "SOLD_OUT", "REJECTED", None)
    assert (row.status, row.step, row.meta) == ("REJECTED", "flight", {})
    assert change.finish == t.Finish("REJECTED", "SOLD_OUT")


def test_abandoning_a_started_step_aborts_it_before_compensating() -> None:
    row = row_at("flight", started=True)
    change = t.abandon(TRIP, row, "CANCELLED", "BY_CUSTOMER", StepStatus.CANCELLED)
    assert row.meta["abort"] == "flight"
    assert statuses(change) == [("flight", StepStatus.CANCELLED), ("trip", SagaStatus.COMPENSATING)]


def test_abandoning_a_step_that_never_started_aborts_nothing() -> None:
    row = row_at("flight")
    change = t.abandon(TRIP, row, "CANCELLED", "BY_CUSTOMER", StepStatus.CANCELLED)
    assert "abort" not in row.meta
    assert row.status == "CANCELLED"  # nothing completed, nothing to abort: over at once
    assert change.finish == t.Finish("CANCELLED", "BY_CUSTOMER")


def test_the_earliest_passed_deadline_decides_the_timeout() -> None:
    row = row_at("hotel", status=SagaStatus.WAITING)
    row.step_deadline = T0 + timedelta(minutes=2)
    row.deadline = T0 + timedelta(minutes=1)
    assert t.expired(TRIP, row, T0) is None
    assert t.expired(TRIP, row, T0 + timedelta(minutes=1)) == ("FAILED", "TRIP_TOO_SLOW")
    row.deadline = T0 + timedelta(minutes=3)
    assert t.expired(TRIP, row, T0 + timedelta(minutes=5)) == ("CANCELLED", "DEADLINE_EXCEEDED")


def test_waiting_sets_the_steps_deadline() -> None:
    row = row_at("hotel", started=True)
    change = t.waiting(row, TRIP.steps[2], {"who": "ada", "ref": 7}, T0)
    assert (row.status, row.step_deadline, row.data["ref"]) == (
        SagaStatus.WAITING,
        T0 + timedelta(minutes=2),
        7,
    )
    assert statuses(change) == [("hotel", StepStatus.WAITING)]


def test_an_unknown_outcome_is_retried_later() -> None:
    row = row_at("hotel", started=True)
    change = t.retry_later(row, "hotel", TimeoutError("slow"), T0 + timedelta(seconds=4))
    assert (row.attempts, row.next_attempt_at) == (1, T0 + timedelta(seconds=4))
    assert statuses(change) == [("hotel", StepStatus.RETRY)]


def test_compensations_walk_back_and_then_finish_with_the_outcome() -> None:
    row = row_at("confirm", started=True)
    t.step_failed(TRIP, row, TRIP.steps[3], row.data, "CARD", "FAILED", None)
    assert t.next_compensation(TRIP, row) == (2, TRIP.steps[2])
    claim = t.claim_undo(row, TRIP.steps[2], "compensate")
    assert statuses(claim) == [("hotel", StepStatus.COMPENSATING)]
    change = t.undo_done(TRIP, row, TRIP.steps[2], row.data, "compensate", 2)
    assert statuses(change) == [("hotel", StepStatus.COMPENSATED)]
    assert row.completed == ["flight", "check"]
    assert t.next_compensation(TRIP, row) == (0, TRIP.steps[0])
    change = t.undo_done(TRIP, row, TRIP.steps[0], row.data, "compensate", 0)
    assert row.status == "FAILED"
    assert row.step == "confirm"
    assert statuses(change) == [("flight", StepStatus.COMPENSATED), ("trip", "FAILED")]


def test_an_undo_that_keeps_failing_parks_the_saga() -> None:
    row = row_at("hotel", status=SagaStatus.COMPENSATING)
    retry_at = T0 + timedelta(seconds=1)
    change = t.undo_failed(row, "flight", RuntimeError("down"), 2, retry_at)
    assert (row.status, row.attempts, row.next_attempt_at) == (SagaStatus.COMPENSATING, 1, retry_at)
    assert change.finish is None
    change = t.undo_failed(row, "flight", RuntimeError("down"), 2, retry_at)
    assert (row.status, row.next_attempt_at) == (SagaStatus.COMPENSATION_FAILED, None)
    assert change.finish is not None
    assert not change.finish.final


@pytest.mark.parametrize(
    ("status", "next_attempt_at", "resumed"),
    [
        (SagaStatus.COMPENSATION_FAILED, None, SagaStatus.COMPENSATING),
        (SagaStatus.RUNNING, T0, SagaStatus.RUNNING),
        (SagaStatus.RUNNING, None, None),
        (SagaStatus.WAITING, T0, None),
        (SagaStatus.COMPLETED, None, None),
    ],
)
def test_an_operator_retry_resumes_only_a_parked_or_backing_off_saga(
    status: str, next_attempt_at: datetime | None, resumed: str | None
) -> None:
    row = row_at("hotel", status=status)
    row.next_attempt_at, row.attempts = next_attempt_at, 3
    change = t.operator_retry(row)
    if resumed is None:
        assert change is None
        assert row.attempts == 3
    else:
        assert change is not None
        assert (row.status, row.attempts, row.next_attempt_at) == (resumed, 0, None)


# -- versions -------------------------------------------------------------------------------

TRIP_V2 = (
    Saga("trip", version=2)
    .step("flight", _noop, compensate=_noop)
    .step("insurance", _noop, compensate=_noop)  # inserted
    .step("hotel", _noop, compensate=_noop)
    .step("confirm", _noop)  # check removed
)


def versions_of(*definitions: Saga) -> Versions:
    versions = Versions("trip")
    for definition in definitions:
        versions.add(definition)
    return versions


def test_a_saga_resolves_to_the_version_it_started_on_while_registered() -> None:
    row = row_at("hotel")
    assert resolve(versions_of(TRIP, TRIP_V2), row) == Resolution(TRIP)


def test_a_row_stored_before_versions_gets_its_completed_steps_from_version_1() -> None:
    row = row_at("hotel")
    row.completed, row.versioned = [], False
    assert resolve(versions_of(TRIP, TRIP_V2), row) == Resolution(TRIP)
    assert (row.completed, row.versioned) == (["flight", "check"], True)


def test_the_newest_version_takes_over_only_when_it_agrees_by_step_names() -> None:
    at_start = row_at("flight")
    assert resolve(versions_of(TRIP_V2), at_start) == Resolution(TRIP_V2, adopted=True)
    later = row_at("hotel")
    found = resolve(versions_of(TRIP_V2), later)
    assert found.definition is None
    assert found.why == "trip v1 is not registered; v2 does not begin with the completed steps flight, check"


def test_compensation_by_a_newer_version_needs_every_step_to_undo_by_name() -> None:
    row = row_at("hotel", status=SagaStatus.COMPENSATING)
    assert resolve(versions_of(TRIP_V2), row).why == "trip v1 is not registered; v2 has no step check to undo"
    row.completed = ["flight"]
    assert resolve(versions_of(TRIP_V2), row) == Resolution(TRIP_V2, adopted=True)
    assert t.next_compensation(TRIP_V2, row) == (0, TRIP_V2.steps[0])


def test_compensation_walks_the_completed_names_not_the_positions() -> None:
    row = row_at("hotel", status=SagaStatus.COMPENSATING)
    row.completed = ["flight", "hotel"]  # by position 1 version 2 would undo insurance
    assert t.next_compensation(TRIP_V2, row) == (1, TRIP_V2.steps[2])


def test_parking_keeps_where_the_saga_stood_and_a_retry_goes_back_there() -> None:
    row = row_at("hotel", status=SagaStatus.COMPENSATING)
    row.failure_reason = "NO_ROOM"
    change = t.park(row, "DEFINITION_CHANGED", "why not")
    assert (row.status, row.failure_reason) == (SagaStatus.PARKED, "DEFINITION_CHANGED")
    assert change.finish == t.Finish(SagaStatus.PARKED, "DEFINITION_CHANGED", final=False)
    assert statuses(change) == [("trip", SagaStatus.PARKED)]
    assert t.operator_retry(row) is not None
    assert (row.status, row.failure_reason) == (SagaStatus.COMPENSATING, "NO_ROOM")
    assert "parked" not in row.meta


def test_adopting_a_version_records_the_move() -> None:
    row = row_at("flight")
    change = t.adopt(row, TRIP_V2)
    assert row.definition_version == 2
    assert [(e.status, e.detail) for e in change.events] == [(StepStatus.MIGRATED, "v1 -> v2")]


def test_a_copied_row_keeps_every_field_and_shares_no_dict_or_list() -> None:
    containers = {"data": {"k": 1}, "meta": {"started": True}, "trace": {"tp": "x"}, "completed": ["a"]}
    # every other field a distinct object: a field the copy forgot would come back as its default
    values = {f.name: containers.get(f.name, object()) for f in dataclasses.fields(SagaRow)}
    row = SagaRow(**values)
    copied = row.copy()
    for f in dataclasses.fields(SagaRow):
        if f.name in containers:
            assert getattr(copied, f.name) == getattr(row, f.name)
            assert getattr(copied, f.name) is not getattr(row, f.name), f.name
        else:
            assert getattr(copied, f.name) is getattr(row, f.name), f.name
