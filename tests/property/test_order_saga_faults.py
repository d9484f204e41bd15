"""The order saga's invariants under injected faults, on the in-process transport.

A failing run prints the seed that replays it: SHOP_PROPERTY_SEED=<seed> make test-deep (or
pytest on this file) runs the same programs and gives the same event logs.
"""

from __future__ import annotations

import os
import random
import time

import pytest
from hypothesis import Phase, seed, settings
from hypothesis.stateful import run_state_machine_as_test

from .machine import DramatiqOrderSagaMachine, OrderSagaMachine, Totals

DEEP = os.environ.get("SHOP_PROPERTY_PROFILE") == "deep"
PROGRAMS = 1500 if DEEP else 12
STEPS = 40 if DEEP else 30
DRAMATIQ_PROGRAMS = 150 if DEEP else 4
DRAMATIQ_STEPS = 40 if DEEP else 25


def run_programs(
    machine: type[OrderSagaMachine], seed_value: int, programs: int, steps: int, *, shrink: bool = True
) -> Totals:
    """Run `programs` random programs of up to `steps` steps from `seed_value`; their totals."""
    totals = machine.totals = Totals()

    def factory() -> OrderSagaMachine:
        return machine()

    phases = [Phase.generate, Phase.shrink] if shrink else [Phase.generate]
    started = time.monotonic()
    try:
        run_state_machine_as_test(
            seed(seed_value)(factory),
            settings=settings(
                max_examples=programs, stateful_step_count=steps, database=None, deadline=None, phases=phases
            ),
        )
    except BaseException:
        print(f"\nreplay this run with SHOP_PROPERTY_SEED={seed_value}")
        raise
    finally:
        print(f"\n{machine.__name__}: {totals.line()}; {time.monotonic() - started:.1f}s (seed {seed_value})")
    return totals


def run_seed() -> int:
    chosen = os.environ.get("SHOP_PROPERTY_SEED")
    return int(chosen) if chosen else random.SystemRandom().getrandbits(32)


def test_order_saga_keeps_its_invariants_under_faults_in_process() -> None:
    totals = run_programs(OrderSagaMachine, run_seed(), PROGRAMS, STEPS)
    assert totals.programs >= PROGRAMS
    assert totals.violations == 0


def test_the_same_seed_gives_the_same_event_log() -> None:
    first = run_programs(OrderSagaMachine, 20261125, 3, 25, shrink=False).hashes
    second = run_programs(OrderSagaMachine, 20261125, 3, 25, shrink=False).hashes
    other = run_programs(OrderSagaMachine, 7, 3, 25, shrink=False).hashes
    assert len(first) == 3
    assert first == second
    assert first != other


@pytest.mark.redis
def test_order_saga_keeps_its_invariants_under_faults_on_dramatiq(redis_url: str) -> None:
    DramatiqOrderSagaMachine.redis_url = redis_url
    totals = run_programs(DramatiqOrderSagaMachine, run_seed(), DRAMATIQ_PROGRAMS, DRAMATIQ_STEPS)
    assert totals.programs >= DRAMATIQ_PROGRAMS
    assert totals.violations == 0
