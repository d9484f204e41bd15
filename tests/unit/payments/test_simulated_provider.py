"""The simulated provider: API.md's tokens, and idempotency by key that is real within a process."""

from __future__ import annotations

import asyncio

import pytest

from shop.modules.payments.provider import ProviderError, ProviderResult
from shop.modules.payments.simulated import SimulatedProvider


async def test_tok_ok_approves_with_a_reference_and_holds_the_amount() -> None:
    provider = SimulatedProvider()

    result = await provider.authorize("k1", 12900, "EUR", "tok_ok")

    assert result.approved
    assert result.provider_ref is not None
    authorization = provider.authorizations[result.provider_ref]
    assert (authorization.amount, authorization.currency, authorization.state) == (12900, "EUR", "AUTHORIZED")


async def test_the_same_key_returns_the_same_result_and_authorizes_once() -> None:
    provider = SimulatedProvider()

    first = await provider.authorize("k1", 12900, "EUR", "tok_ok")
    again = await provider.authorize("k1", 12900, "EUR", "tok_ok")
    other = await provider.authorize("k2", 12900, "EUR", "tok_ok")

    assert again == first
    assert other.provider_ref != first.provider_ref
    assert len(provider.authorizations) == 2


async def test_overlapping_calls_with_one_key_authorize_once() -> None:
    provider = SimulatedProvider(slow_delay=0.01)

    results = await asyncio.gather(*(provider.authorize("k1", 500, "EUR", "tok_slow") for _ in range(5)))

    assert len(set(results)) == 1
    assert len(provider.authorizations) == 1


async def test_no_lock_is_kept_for_a_key_once_its_calls_are_done() -> None:
    """Payments' keys are one an operation of a payment: a lock kept for each would grow with
    every order the shop ever took."""
    provider = SimulatedProvider(slow_delay=0.01)
    overlapping = [provider.authorize("k1", 500, "EUR", "tok_slow") for _ in range(3)]
    running = asyncio.gather(*overlapping)
    await asyncio.sleep(0)
    assert provider._locks.keys() == ["k1"]  # held by one call, two waiting
    await running
    for n in range(50):
        await provider.authorize(f"key-{n}", 100, "EUR", "tok_ok")
    assert len(provider._locks) == 0
    assert await provider.authorize("key-7", 100, "EUR", "tok_ok") == provider._results["key-7"][1]


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        pytest.param("tok_decline", "card_declined", id="decline"),
        pytest.param("tok_nonsense", "invalid_token", id="unknown-token"),
        pytest.param("", "invalid_token", id="empty-token"),
    ],
)
async def test_declines_carry_their_reason_and_hold_nothing(token: str, reason: str) -> None:
    provider = SimulatedProvider()

    result = await provider.authorize("k1", 100, "EUR", token)

    assert result == ProviderResult(approved=False, provider_ref=None, reason=reason)
    assert await provider.authorize("k1", 100, "EUR", token) == result
    assert provider.authorizations == {}


async def test_tok_error_fails_with_a_server_error_every_time_and_remembers_nothing() -> None:
    provider = SimulatedProvider()

    for _ in range(3):
        with pytest.raises(ProviderError):
            await provider.authorize("k1", 100, "EUR", "tok_error")

    assert provider.calls["authorize"] == 3
    assert provider.authorizations == {}


async def test_tok_slow_answers_only_after_its_delay_so_a_shorter_timeout_always_cuts_it_off() -> None:
    provider = SimulatedProvider(slow_delay=0.2)

    for _ in range(2):
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.02):
                await provider.authorize("k1", 100, "EUR", "tok_slow")
    assert provider.authorizations == {}  # a call cut off leaves nothing behind

    patient = await provider.authorize("k1", 100, "EUR", "tok_slow")
    assert patient.approved


async def test_capture_is_idempotent_by_key_and_a_second_capture_is_refused() -> None:
    provider = SimulatedProvider()
    ref = (await provider.authorize("a", 700, "EUR", "tok_ok")).provider_ref
    assert ref is not None

    first = await provider.capture("c", ref)
    again = await provider.capture("c", ref)
    other_key = await provider.capture("c2", ref)

    assert first == again == ProviderResult(approved=True, provider_ref=ref)
    assert other_key.reason == "already_captured"
    assert provider.captured_total == 700


async def test_a_voided_authorization_cannot_be_captured_and_a_captured_one_cannot_be_voided() -> None:
    provider = SimulatedProvider()
    voided = (await provider.authorize("a1", 100, "EUR", "tok_ok")).provider_ref
    captured = (await provider.authorize("a2", 200, "EUR", "tok_ok")).provider_ref
    assert voided is not None
    assert captured is not None

    assert (await provider.void("v1", voided)).approved
    assert (await provider.capture("c1", voided)).reason == "authorization_voided"
    assert (await provider.capture("c2", captured)).approved
    assert (await provider.void("v2", captured)).reason == "already_captured"
    assert (await provider.capture("c9", "sim_auth_unknown")).reason == "unknown_authorization"
    assert provider.captured_total == 200


async def test_refunds_are_idempotent_by_key_and_never_exceed_the_capture() -> None:
    provider = SimulatedProvider()
    ref = (await provider.authorize("a", 1000, "EUR", "tok_ok")).provider_ref
    assert ref is not None
    assert (await provider.refund("r0", ref, 100)).reason == "not_captured"
    await provider.capture("c", ref)

    assert (await provider.refund("r1", ref, 600)).approved
    assert (await provider.refund("r1", ref, 600)).approved  # the same refund again: no money moves
    assert (await provider.refund("r2", ref, 500)).reason == "exceeds_captured"
    assert (await provider.refund("r3", ref, 400)).approved

    assert provider.refunded_total == 1000
    assert provider.captured_total == 1000


async def test_a_key_belongs_to_one_operation() -> None:
    provider = SimulatedProvider()
    ref = (await provider.authorize("k", 100, "EUR", "tok_ok")).provider_ref
    assert ref is not None

    with pytest.raises(ValueError, match="authorize"):
        await provider.capture("k", ref)
