"""The Stripe provider against a local fake of Stripe's endpoints, over real HTTP on loopback:
each outcome maps onto the port as the simulated provider's do, every request carries an
idempotency key derived from the caller's and the step, and the guard's retries after a 5xx, a
timeout or a lost answer move money once."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator

import pytest

from shop.bus.breaker import BreakerConfig, BreakerRegistry
from shop.bus.retry import RetryPolicy
from shop.modules.payments.provider import (
    ALREADY_CAPTURED,
    AUTHORIZATION_VOIDED,
    EXCEEDS_CAPTURED,
    INVALID_TOKEN,
    NOT_CAPTURED,
    UNKNOWN_AUTHORIZATION,
    GuardedProvider,
    ProviderError,
    ProviderResult,
)
from shop.modules.payments.stripe_provider import (
    StripeProvider,
    StripeRequestRefused,
    stripe_idempotency_key,
)

from ..fakestripe import (
    API_KEY,
    APPROVE,
    DECLINE,
    DECLINE_BY_STATUS,
    DECLINE_INSUFFICIENT_FUNDS,
    FakeStripe,
)

INTENTS = "/v1/payment_intents"
NO_WAIT = RetryPolicy(max_attempts=3, base_delay=0.0)
CALL_TIMEOUT = 2.0  # generous: loopback answers in milliseconds, even on a busy machine


@pytest.fixture
def fake() -> Iterator[FakeStripe]:
    with FakeStripe() as fake:
        yield fake


@pytest.fixture
async def stripe(fake: FakeStripe) -> AsyncIterator[StripeProvider]:
    provider = StripeProvider(API_KEY, api_base=fake.url, timeout=CALL_TIMEOUT)
    yield provider
    await provider.aclose()


def guard(provider: StripeProvider, *, timeout: float = CALL_TIMEOUT) -> GuardedProvider:
    breakers = BreakerRegistry(BreakerConfig(minimum_number_of_calls=10))
    return GuardedProvider(provider, breakers, timeout=timeout, retry=NO_WAIT)


async def authorized(stripe: StripeProvider, key: str = "pay-1:authorize", amount: int = 2500) -> str:
    result = await stripe.authorize(key, amount, "EUR", APPROVE)
    assert result.approved, result
    assert result.provider_ref is not None
    return result.provider_ref


async def captured(stripe: StripeProvider, key: str = "pay-1", amount: int = 2500) -> str:
    ref = await authorized(stripe, f"{key}:authorize", amount)
    assert (await stripe.capture(f"{key}:capture", ref)).approved
    return ref


# -- the operations ---------------------------------------------------------------------------


async def test_an_approved_card_is_authorized_without_capture_then_captured(
    stripe: StripeProvider, fake: FakeStripe
) -> None:
    result = await stripe.authorize("pay-1:authorize", 2500, "EUR", APPROVE)

    assert result.approved
    assert result.provider_ref is not None
    assert result.provider_ref.startswith("pi_")
    [create] = fake.requests_to("POST", INTENTS)
    assert create.params["amount"] == "2500"
    assert create.params["currency"] == "eur"
    assert create.params["payment_method"] == APPROVE
    assert create.params["capture_method"] == "manual"
    assert create.params["confirm"] == "true"
    assert (fake.authorized_total, fake.captured_total) == (2500, 0)  # held, not taken

    capture = await stripe.capture("pay-1:capture", result.provider_ref)

    assert capture == ProviderResult.ok(result.provider_ref)
    assert (fake.authorized_total, fake.captured_total) == (0, 2500)


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        pytest.param(DECLINE, "card_declined", id="card-error-402"),
        pytest.param(DECLINE_INSUFFICIENT_FUNDS, "card_declined", id="card-error-insufficient-funds"),
        pytest.param(DECLINE_BY_STATUS, "card_declined", id="status-requires-payment-method"),
    ],
)
async def test_a_card_decline_is_a_declined_result_not_an_error(
    stripe: StripeProvider, fake: FakeStripe, token: str, reason: str
) -> None:
    result = await stripe.authorize("pay-1:authorize", 2500, "EUR", token)

    assert not result.approved
    assert result.reason == reason
    [intent] = fake.intents.values()
    assert result.provider_ref == intent["id"]
    assert (fake.authorized_total, fake.captured_total) == (0, 0)


async def test_an_unknown_payment_method_is_declined_as_invalid_token(
    stripe: StripeProvider, fake: FakeStripe
) -> None:
    result = await stripe.authorize("pay-1:authorize", 2500, "EUR", "pm_nobody_knows")

    assert result == ProviderResult.declined(INVALID_TOKEN)
    assert fake.intents == {}


async def test_void_cancels_the_authorization_and_a_later_capture_is_refused_as_voided(
    stripe: StripeProvider, fake: FakeStripe
) -> None:
    ref = await authorized(stripe)

    assert await stripe.void("pay-1:void", ref) == ProviderResult.ok(ref)
    assert fake.intents[ref]["status"] == "canceled"
    assert fake.authorized_total == 0

    assert await stripe.capture("pay-1:capture", ref) == ProviderResult.declined(AUTHORIZATION_VOIDED, ref)
    assert await stripe.void("pay-1:void-again", ref) == ProviderResult.ok(ref)  # voided already
    assert fake.captured_total == 0


async def test_a_captured_payment_cannot_be_voided_or_captured_again(
    stripe: StripeProvider, fake: FakeStripe
) -> None:
    ref = await captured(stripe)

    assert await stripe.void("pay-1:void", ref) == ProviderResult.declined(ALREADY_CAPTURED, ref)
    assert await stripe.capture("pay-1:capture-2", ref) == ProviderResult.declined(ALREADY_CAPTURED, ref)
    assert fake.captured_total == 2500


async def test_refunds_return_captured_money_and_never_more(stripe: StripeProvider, fake: FakeStripe) -> None:
    ref = await captured(stripe)

    assert await stripe.refund("pay-1:refund", ref, 1000) == ProviderResult.ok(ref)
    assert await stripe.refund("pay-1:refund-2", ref, 1500) == ProviderResult.ok(ref)
    assert fake.refunded_total == 2500
    [first, _second] = fake.requests_to("POST", "/v1/refunds")
    assert (first.params["payment_intent"], first.params["amount"]) == (ref, "1000")

    assert await stripe.refund("pay-1:refund-3", ref, 1) == ProviderResult.declined(EXCEEDS_CAPTURED, ref)
    assert fake.refunded_total == 2500


async def test_refunding_more_than_is_left_or_an_uncaptured_payment_is_declined(
    stripe: StripeProvider,
) -> None:
    ref = await captured(stripe, "pay-1")
    assert await stripe.refund("pay-1:refund", ref, 3000) == ProviderResult.declined(EXCEEDS_CAPTURED, ref)

    held = await authorized(stripe, "pay-2:authorize")
    assert await stripe.refund("pay-2:refund", held, 100) == ProviderResult.declined(NOT_CAPTURED, held)


async def test_an_unknown_reference_is_declined_as_unknown_authorization(stripe: StripeProvider) -> None:
    ref = "pi_never_issued"

    assert await stripe.capture("k:capture", ref) == ProviderResult.declined(UNKNOWN_AUTHORIZATION, ref)
    assert await stripe.void("k:void", ref) == ProviderResult.declined(UNKNOWN_AUTHORIZATION, ref)
    assert await stripe.refund("k:refund", ref, 100) == ProviderResult.declined(UNKNOWN_AUTHORIZATION, ref)


# -- idempotency ------------------------------------------------------------------------------


async def test_every_request_carries_a_key_derived_from_the_callers_key_and_the_step(
    stripe: StripeProvider, fake: FakeStripe
) -> None:
    ref = await captured(stripe, "pay-7")
    await stripe.refund("pay-7:refund", ref, 2500)
    held = await authorized(stripe, "pay-8:authorize")
    await stripe.void("pay-8:void", held)

    keys = [r.idempotency_key for r in fake.requests if r.method == "POST"]
    assert keys == [
        "shop:pay-7:authorize:payment_intent.create",
        "shop:pay-7:capture:payment_intent.capture",
        "shop:pay-7:refund:refund.create",
        "shop:pay-8:authorize:payment_intent.create",
        "shop:pay-8:void:payment_intent.cancel",
    ]
    assert all(r.stripe_version for r in fake.requests)  # the library pins its API version
    assert fake.intents[ref]["metadata"] == {"shop_idempotency_key": "pay-7:authorize"}


def test_a_key_too_long_for_stripe_is_hashed_deterministically() -> None:
    long = "x" * 300

    key = stripe_idempotency_key(long, "payment_intent.create")

    assert len(key) <= 255
    assert key == stripe_idempotency_key(long, "payment_intent.create")
    assert key != stripe_idempotency_key(long, "payment_intent.capture")


async def test_the_same_key_twice_moves_money_once(stripe: StripeProvider, fake: FakeStripe) -> None:
    first = await stripe.authorize("pay-1:authorize", 2500, "EUR", APPROVE)
    again = await stripe.authorize("pay-1:authorize", 2500, "EUR", APPROVE)

    assert again == first
    assert len(fake.intents) == 1
    assert first.provider_ref is not None

    assert (await stripe.capture("pay-1:capture", first.provider_ref)).approved
    assert (await stripe.capture("pay-1:capture", first.provider_ref)).approved  # the first answer
    assert fake.captured_total == 2500

    assert (await stripe.refund("pay-1:refund", first.provider_ref, 2500)).approved
    assert (await stripe.refund("pay-1:refund", first.provider_ref, 2500)).approved
    assert fake.refunded_total == 2500

    other = await stripe.authorize("pay-2:authorize", 2500, "EUR", APPROVE)  # another key: more money
    assert other.provider_ref != first.provider_ref
    assert len(fake.intents) == 2


# -- failures, through the guard --------------------------------------------------------------


async def test_a_5xx_is_retried_with_the_same_key_and_counted_by_the_breaker(
    stripe: StripeProvider, fake: FakeStripe
) -> None:
    guarded = guard(stripe)
    fake.fail(500)

    result = await guarded.authorize("pay-1:authorize", 2500, "EUR", APPROVE)

    assert result.approved
    first, second = fake.requests_to("POST", INTENTS)
    assert first.idempotency_key == second.idempotency_key == "shop:pay-1:authorize:payment_intent.create"
    assert len(fake.intents) == 1
    assert guarded.breaker.name == "provider:stripe"
    assert guarded.breaker.metrics().failed_calls == 1


async def test_a_5xx_every_time_raises_provider_error_after_the_retries(
    stripe: StripeProvider, fake: FakeStripe
) -> None:
    guarded = guard(stripe)
    fake.fail(503, times=3)

    with pytest.raises(ProviderError):
        await guarded.authorize("pay-1:authorize", 2500, "EUR", APPROVE)

    assert len(fake.requests_to("POST", INTENTS)) == 3
    assert guarded.breaker.metrics().failed_calls == 3
    assert fake.intents == {}


async def test_a_timeout_raises_timeout_error_counts_in_the_breaker_and_moves_money_once(
    stripe: StripeProvider, fake: FakeStripe
) -> None:
    guarded = guard(stripe, timeout=0.3)
    fake.delay(1.0, times=3)  # slower than the guard's timeout, every attempt

    with pytest.raises(TimeoutError):
        await guarded.authorize("pay-1:authorize", 2500, "EUR", APPROVE)

    attempts = fake.requests_to("POST", INTENTS)
    assert len(attempts) == 3
    assert {a.idempotency_key for a in attempts} == {"shop:pay-1:authorize:payment_intent.create"}
    assert guarded.breaker.metrics().failed_calls == 3

    # The slow server did the work after all; the same key gets that one authorization.
    again = await guarded.authorize("pay-1:authorize", 2500, "EUR", APPROVE)
    assert again.approved
    deadline = asyncio.get_running_loop().time() + 5
    while fake.in_flight:  # the delayed attempts finish on the fake's side
        assert asyncio.get_running_loop().time() < deadline, "the fake never finished"
        await asyncio.sleep(0.05)
    assert list(fake.intents) == [again.provider_ref]
    assert fake.authorized_total == 2500


async def test_the_clients_own_timeout_is_a_timeout_error_too(fake: FakeStripe) -> None:
    provider = StripeProvider(API_KEY, api_base=fake.url, timeout=0.2)
    fake.delay(1.0)
    try:
        with pytest.raises(TimeoutError):
            await provider.authorize("pay-1:authorize", 2500, "EUR", APPROVE)
    finally:
        await provider.aclose()


async def test_a_lost_response_is_retried_and_gets_the_original_result_moving_money_once(
    stripe: StripeProvider, fake: FakeStripe
) -> None:
    guarded = guard(stripe)
    fake.drop(path=INTENTS)  # the fake authorizes, then hangs up without answering

    result = await guarded.authorize("pay-1:authorize", 2500, "EUR", APPROVE)

    assert result.approved
    [intent] = fake.intents.values()
    assert result.provider_ref == intent["id"]
    assert len(fake.requests_to("POST", INTENTS)) == 2
    assert guarded.breaker.metrics().failed_calls == 1

    capture_path = f"{INTENTS}/{intent['id']}/capture"
    fake.drop(path=capture_path)
    assert (await guarded.capture("pay-1:capture", intent["id"])).approved
    assert len(fake.requests_to("POST", capture_path)) == 2
    assert fake.captured_total == 2500


async def test_an_unreachable_stripe_raises_provider_error(fake: FakeStripe) -> None:
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    provider = StripeProvider(API_KEY, api_base=f"http://127.0.0.1:{port}", timeout=CALL_TIMEOUT)
    try:
        with pytest.raises(ProviderError):
            await provider.authorize("pay-1:authorize", 2500, "EUR", APPROVE)
    finally:
        await provider.aclose()


async def test_a_wrong_api_key_is_refused_without_retrying(fake: FakeStripe) -> None:
    provider = StripeProvider("sk_test_not_the_right_one", api_base=fake.url, timeout=CALL_TIMEOUT)
    guarded = guard(provider)
    try:
        with pytest.raises(StripeRequestRefused, match="401"):
            await guarded.authorize("pay-1:authorize", 2500, "EUR", APPROVE)
    finally:
        await provider.aclose()

    assert len(fake.requests_to("POST", INTENTS)) == 1
    assert fake.intents == {}
