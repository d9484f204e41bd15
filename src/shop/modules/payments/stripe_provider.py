"""The Stripe payment provider: PaymentIntents with manual capture, through the official library's
asynchronous (httpx) client, so no call blocks the event loop.

authorize = create a PaymentIntent with `capture_method=manual`, `confirm=true` and the payment
token as its `payment_method` (cards only, `error_on_requires_action`: nobody is there to pass a
3-D Secure challenge); capture = capture that intent; void = cancel it; refund = create a Refund
of it. The reference the port hands around is the intent's id (`pi_...`).

Every request carries a Stripe idempotency key derived from the caller's key and the step
(`stripe_idempotency_key`): the same call retried, after a timeout or a lost answer, gets the
first answer back and moves no money twice.

Outcomes map onto the port as the simulated provider's do (docs/adr/0015-stripe-provider.md):
a card decline -- a `CardError`, or an intent left `requires_payment_method` -- is
`ProviderResult.declined(<Stripe's code>)`; an unknown payment method is `invalid_token`; a
state Stripe refuses to move from is the port's reason (`already_captured`,
`authorization_voided`, `not_captured`, ...); a 5xx, a 409, a rate limit or a connection error
raises `ProviderError`; a call that does not answer in time raises `TimeoutError`. Anything else
Stripe refuses (a bad API key, bad parameters) raises `StripeRequestRefused`: neither a decline nor
worth retrying now -- the bus retries the command, then dead-letters it for an operator.
"""

from __future__ import annotations

import hashlib

import httpx
import stripe

from shop.modules.payments.provider import (
    ALREADY_CAPTURED,
    AUTHORIZATION_VOIDED,
    CARD_DECLINED,
    EXCEEDS_CAPTURED,
    INVALID_TOKEN,
    NOT_CAPTURED,
    UNKNOWN_AUTHORIZATION,
    ProviderError,
    ProviderResult,
)
from shop.observability.loggers import get_logger
from shop.settings import Settings

log = get_logger("shop.payments.stripe")

# The steps, as they appear in the idempotency keys.
AUTHORIZE = "payment_intent.create"
CAPTURE = "payment_intent.capture"
VOID = "payment_intent.cancel"
REFUND = "refund.create"

MAX_KEY_LENGTH = 255  # Stripe's limit on an idempotency key
METADATA_KEY = "shop_idempotency_key"  # on every intent and refund, for reconciliation
AUTHENTICATION_REQUIRED = "authentication_required"
REFUND_FAILED = "refund_failed"
# Intent statuses.
REQUIRES_CAPTURE = "requires_capture"
SUCCEEDED = "succeeded"
CANCELED = "canceled"
PROCESSING = "processing"
REQUIRES_PAYMENT_METHOD = "requires_payment_method"


class StripeRequestRefused(Exception):
    """Stripe refused the request itself (401/403, a parameter it rejects, an idempotency key
    reused with other parameters): a bug or a misconfiguration, not a decline and not transient,
    so the guard does not retry it."""


def stripe_idempotency_key(idempotency_key: str, step: str) -> str:
    """`shop:<caller's key>:<step>`, or its SHA-256 when that is longer than Stripe allows."""
    key = f"shop:{idempotency_key}:{step}"
    if len(key) <= MAX_KEY_LENGTH:
        return key
    return "shop:sha256:" + hashlib.sha256(key.encode()).hexdigest()


def _failure(exc: stripe.StripeError) -> Exception:
    """The port's exception for an error that is not a business answer."""
    if isinstance(exc, stripe.APIConnectionError):
        if isinstance(exc.__cause__, httpx.TimeoutException):
            return TimeoutError(f"stripe: no answer in time ({type(exc.__cause__).__name__})")
        return ProviderError(f"stripe: connection failed: {exc.__cause__!r}")
    if isinstance(exc, stripe.APIError | stripe.RateLimitError):
        return ProviderError(f"stripe: {exc.http_status} {exc.user_message}")
    return StripeRequestRefused(f"stripe refused the request: {exc.http_status} {exc!r}")


def _decline_reason(error: object) -> str:
    """Stripe's code of a card decline (`card_declined`, `expired_card`, `incorrect_cvc`, ...)."""
    code = getattr(error, "code", None)
    return code if isinstance(code, str) and code else CARD_DECLINED


class StripeProvider:
    """The PaymentProvider port over Stripe's PaymentIntents API."""

    name = "stripe"

    def __init__(self, api_key: str, *, api_base: str | None = None, timeout: float = 2.0) -> None:
        # The guard retries (with the same idempotency keys) behind its breaker: the library
        # itself must not, or one attempt of the guard would last several timeouts.
        self._http = stripe.HTTPXClient(timeout=timeout)
        self.client = stripe.StripeClient(
            api_key,
            base_addresses={"api": api_base} if api_base else None,
            max_network_retries=0,
            http_client=self._http,
        )

    async def aclose(self) -> None:
        """Close the connection pool (the module's shutdown)."""
        await self._http.close_async()  # type: ignore[no-untyped-call]  # untyped in the library

    # -- the port -------------------------------------------------------------------------

    async def authorize(self, idempotency_key: str, amount: int, currency: str, token: str) -> ProviderResult:
        try:
            intent = await self.client.v1.payment_intents.create_async(
                {
                    "amount": amount,
                    "currency": currency.lower(),
                    "payment_method": token,
                    "allowed_payment_method_types": ["card"],
                    "capture_method": "manual",
                    "confirm": True,
                    "error_on_requires_action": True,
                    "metadata": {METADATA_KEY: idempotency_key},
                },
                {"idempotency_key": stripe_idempotency_key(idempotency_key, AUTHORIZE)},
            )
        except stripe.CardError as exc:
            declined_intent = getattr(exc.error, "payment_intent", None) if exc.error else None
            ref = getattr(declined_intent, "id", None)
            log.info("payments.stripe.declined", code=exc.code, decline_code=_decline_code(exc), ref=ref)
            return ProviderResult.declined(_decline_reason(exc), ref)
        except stripe.InvalidRequestError as exc:
            if exc.param == "payment_method":  # no such payment method, or not usable
                return ProviderResult.declined(INVALID_TOKEN)
            raise _failure(exc) from exc
        except stripe.StripeError as exc:
            raise _failure(exc) from exc
        intent = await self._settled(intent)
        status = intent.status
        if status in (REQUIRES_CAPTURE, SUCCEEDED):
            return ProviderResult.ok(intent.id)
        if status == REQUIRES_PAYMENT_METHOD:
            error = getattr(intent, "last_payment_error", None)
            return ProviderResult.declined(_decline_reason(error), intent.id)
        if status in ("requires_action", "requires_confirmation"):
            return ProviderResult.declined(AUTHENTICATION_REQUIRED, intent.id)
        if status == CANCELED:
            return ProviderResult.declined(AUTHORIZATION_VOIDED, intent.id)
        raise ProviderError(f"stripe: payment intent {intent.id} is {status}")

    async def capture(self, idempotency_key: str, authorization_ref: str) -> ProviderResult:
        ref = authorization_ref
        try:
            intent = await self.client.v1.payment_intents.capture_async(
                ref, options={"idempotency_key": stripe_idempotency_key(idempotency_key, CAPTURE)}
            )
        except stripe.InvalidRequestError as exc:
            found = await self._refused(exc, ref)
            if isinstance(found, ProviderResult):
                return found
            intent = found
            if intent.status == CANCELED:
                return ProviderResult.declined(AUTHORIZATION_VOIDED, ref)
            if intent.status in (REQUIRES_CAPTURE, PROCESSING):
                raise ProviderError(f"stripe: could not capture {ref} ({intent.status})") from exc
            return ProviderResult.declined(NOT_CAPTURED, ref)  # never authorized
        except stripe.StripeError as exc:
            raise _failure(exc) from exc
        intent = await self._settled(intent)
        if intent.status == SUCCEEDED:
            return ProviderResult.ok(ref)
        raise ProviderError(f"stripe: captured {ref} is {intent.status}")

    async def void(self, idempotency_key: str, ref: str) -> ProviderResult:
        try:
            intent = await self.client.v1.payment_intents.cancel_async(
                ref, options={"idempotency_key": stripe_idempotency_key(idempotency_key, VOID)}
            )
        except stripe.InvalidRequestError as exc:
            found = await self._refused(exc, ref)
            if isinstance(found, ProviderResult):
                return found
            intent = found
            if intent.status == CANCELED:
                return ProviderResult.ok(ref)  # voided already: the same end
            raise ProviderError(f"stripe: could not cancel {ref} ({intent.status})") from exc
        except stripe.StripeError as exc:
            raise _failure(exc) from exc
        if intent.status == CANCELED:
            return ProviderResult.ok(ref)
        raise ProviderError(f"stripe: cancelled {ref} is {intent.status}")

    async def refund(self, idempotency_key: str, ref: str, amount: int) -> ProviderResult:
        try:
            refund = await self.client.v1.refunds.create_async(
                {"payment_intent": ref, "amount": amount, "metadata": {METADATA_KEY: idempotency_key}},
                {"idempotency_key": stripe_idempotency_key(idempotency_key, REFUND)},
            )
        except stripe.InvalidRequestError as exc:
            reason = {
                "resource_missing": UNKNOWN_AUTHORIZATION,
                "payment_intent_unexpected_state": NOT_CAPTURED,
                "charge_already_refunded": EXCEEDS_CAPTURED,
                "amount_too_large": EXCEEDS_CAPTURED,
            }.get(exc.code or "")
            if reason is None:
                raise _failure(exc) from exc
            return ProviderResult.declined(reason, ref)
        except stripe.StripeError as exc:
            raise _failure(exc) from exc
        if refund.status in ("failed", "canceled"):
            return ProviderResult.declined(REFUND_FAILED, ref)
        return ProviderResult.ok(ref)  # succeeded, or pending: Stripe has taken it

    # -- helpers --------------------------------------------------------------------------

    async def _refused(
        self, exc: stripe.InvalidRequestError, ref: str
    ) -> ProviderResult | stripe.PaymentIntent:
        """A capture or cancel Stripe refused: the answer when the refusal settles it (an unknown
        intent, one captured already), else the intent as it is now; any other refusal raised."""
        if exc.code == "resource_missing":
            return ProviderResult.declined(UNKNOWN_AUTHORIZATION, ref)
        if exc.code != "payment_intent_unexpected_state":
            raise _failure(exc) from exc
        intent = await self._current(ref)
        if intent.status == SUCCEEDED:
            return ProviderResult.declined(ALREADY_CAPTURED, ref)
        return intent

    async def _current(self, ref: str) -> stripe.PaymentIntent:
        """The intent as it is now (a GET needs no idempotency key)."""
        try:
            return await self.client.v1.payment_intents.retrieve_async(ref)
        except stripe.StripeError as exc:
            raise _failure(exc) from exc

    async def _settled(self, intent: stripe.PaymentIntent) -> stripe.PaymentIntent:
        """The intent, looked at again if it was still `processing` (a replayed answer would
        show that forever; the intent itself moves on)."""
        if intent.status != PROCESSING:
            return intent
        current = await self._current(intent.id)
        if current.status == PROCESSING:
            raise ProviderError(f"stripe: payment intent {intent.id} is still processing")
        return current


def _decline_code(exc: stripe.CardError) -> str | None:
    code = getattr(exc.error, "decline_code", None) if exc.error else None
    return code if isinstance(code, str) else None


def stripe_provider(settings: Settings) -> StripeProvider:
    """The provider SHOP_PAYMENT_PROVIDER=stripe selects: SHOP_STRIPE_API_KEY, SHOP_STRIPE_API_BASE
    (a stand-in's address; Stripe's own by default), each request bounded by
    SHOP_PAYMENT_PROVIDER_TIMEOUT_S (the guard's own timeout is the same)."""
    settings.check_payment_provider()
    assert settings.stripe_api_key is not None
    return StripeProvider(
        settings.stripe_api_key,
        api_base=settings.stripe_api_base,
        timeout=settings.payment_provider_timeout_s,
    )
