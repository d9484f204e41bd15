"""Programs the property tests found failing, kept as they were shrunk (by hand where Hypothesis
took too long), replayed step by step on the same harness."""

from __future__ import annotations

from .machine import OrderSagaMachine


def test_a_provider_outage_that_opens_its_breaker_does_not_dead_letter_take_payment() -> None:
    """Found with SHOP_PROPERTY_SEED=11: the provider failed often enough to open its breaker;
    TakePayment's redeliveries (50 ms … 400 ms apart) all met the open breaker and were
    dead-lettered, and the paid-for order was cancelled at its payment deadline. Now a message
    that failed on an open breaker comes back when the breaker takes calls again."""
    machine = OrderSagaMachine()
    try:
        machine.boot()
        machine.place_order(customer=0, lines=[(0, 1)], token="tok_ok", others_address=False)
        machine.provider_faults(faults=["fail", "fail", "fail"])
        machine.provider_faults(faults=["fail", "fail", "fail"])
        for _ in range(16):  # deliver what is due; otherwise let a second pass
            if machine.network.deliverable():
                machine.deliver(which=0, how="once")
            else:
                machine.advance(seconds=1.0, operator=False)
            machine.invariants_hold()
        assert any("TakePayment" in line and "retry in" in line for line in machine.events)
        assert not any(line.endswith("-> dead") for line in machine.events)
    finally:
        machine.teardown()  # heals, drains and checks the promises at quiescence
    assert machine.run_statuses == ["COMPLETED"], "\n".join(machine.events)
    assert not any(line.endswith("-> dead") for line in machine.events), "\n".join(machine.events)
