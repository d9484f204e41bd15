"""A local stand-in for the Stripe endpoints the payments module uses, served over real HTTP on
127.0.0.1 (an ephemeral port) by its own thread and event loop, so the adapter's real path --
the `stripe` library, its httpx client, the sockets -- is exercised, whichever loop the shop runs on.

What it does, as Stripe documents it:
- `POST /v1/payment_intents` (form-encoded, `confirm=true`): the payment method decides --
  `pm_card_visa` authorizes (`requires_capture` with `capture_method=manual`, `succeeded` and
  captured otherwise); `pm_card_chargeDeclined` and `pm_card_chargeDeclinedInsufficientFunds`
  answer 402 `card_error` (the intent left `requires_payment_method`); `pm_fake_declinedStatus`
  answers 200 with the intent `requires_payment_method` and its `last_payment_error`; any other is
  400 `resource_missing` on `payment_method`.
- `GET /v1/payment_intents/{id}`, `POST .../{id}/capture`, `POST .../{id}/cancel`, `POST
  /v1/refunds`: 404 `resource_missing` for an unknown intent, 400
  `payment_intent_unexpected_state` for a move its state forbids, `charge_already_refunded` /
  `amount_too_large` for too much refunded.
- Idempotency: the first answer to a key is saved with the request's method, path and
  parameters; the same key again gets it back (`Idempotent-Replayed: true`) and moves nothing; the
  same key with other parameters is 400 `idempotency_error`. A wrong API key is 401.

Faults, for the next requests (optionally of one path only), in the order they were asked for:
`delay(seconds)` answers late (the work is done after the delay, as a slow server would),
`fail(status)` answers a 5xx before doing anything (nothing saved: safe to retry), `drop()` does
the work and saves its answer, then closes the connection without answering (a lost response).

The ledger (`intents`, `refunds`, `captured_total`, `refunded_total`, `authorized_total`) and
every request received (`requests`) can be read from any thread.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

API_KEY = "sk_test_fake_0123456789"

APPROVE = "pm_card_visa"
DECLINE = "pm_card_chargeDeclined"
DECLINE_INSUFFICIENT_FUNDS = "pm_card_chargeDeclinedInsufficientFunds"
DECLINE_BY_STATUS = "pm_fake_declinedStatus"
DECLINE_CODES = {DECLINE: "generic_decline", DECLINE_INSUFFICIENT_FUNDS: "insufficient_funds"}

REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 402: "Request Failed", 404: "Not Found"}


@dataclass(frozen=True)
class Request:
    """One request as the fake received it."""

    method: str
    path: str
    params: dict[str, str]
    idempotency_key: str | None
    stripe_version: str | None


@dataclass
class Fault:
    kind: str  # delay | fail | drop
    path: str | None
    seconds: float = 0.0
    status: int = 500


@dataclass
class _Answer:
    status: int
    body: dict[str, Any]
    replayed: bool = False


@dataclass
class _Saved:
    method: str
    path: str
    params: dict[str, str]
    answer: _Answer


@dataclass
class FakeStripe:
    api_key: str = API_KEY
    intents: dict[str, dict[str, Any]] = field(default_factory=dict)
    refunds: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._saved: dict[str, _Saved] = {}
        self._faults: deque[Fault] = deque()
        self._ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self.port = 0

    # -- life ---------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeStripe:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="fake-stripe", daemon=True)
        self._thread.start()
        if not ready.wait(5):
            raise RuntimeError("the fake Stripe did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stopped is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> FakeStripe:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self, ready: threading.Event) -> None:
        asyncio.run(self._main(ready))

    async def _main(self, ready: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        ready.set()
        async with server:
            await self._stopped.wait()
            server.close()
            for task in list(self._handlers):
                task.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)

    # -- faults -------------------------------------------------------------------------------

    def delay(self, seconds: float, *, times: int = 1, path: str | None = None) -> None:
        self._add(Fault("delay", path, seconds=seconds), times)

    def fail(self, status: int = 500, *, times: int = 1, path: str | None = None) -> None:
        self._add(Fault("fail", path, status=status), times)

    def drop(self, *, times: int = 1, path: str | None = None) -> None:
        self._add(Fault("drop", path), times)

    def _add(self, fault: Fault, times: int) -> None:
        with self._lock:
            self._faults.extend(fault for _ in range(times))

    def _take_fault(self, path: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.path is None or fault.path == path:
                    self._faults.remove(fault)
                    return fault
        return None

    # -- the ledger ---------------------------------------------------------------------------

    @property
    def captured_total(self) -> int:
        with self._lock:
            return sum(int(i["amount_received"]) for i in self.intents.values())

    @property
    def authorized_total(self) -> int:
        """Money held and not captured (intents `requires_capture`)."""
        with self._lock:
            return sum(int(i["amount_capturable"]) for i in self.intents.values())

    @property
    def refunded_total(self) -> int:
        with self._lock:
            return sum(int(r["amount"]) for r in self.refunds.values())

    @property
    def in_flight(self) -> int:
        """Requests being served (a delayed one goes on after its client gave up)."""
        return len(self._handlers)

    def requests_to(self, method: str, path: str) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if (r.method, r.path) == (method, path)]

    # -- HTTP ---------------------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._handlers.discard(task)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        method, target, _version = request_line.split(" ", 2)
        headers = {}
        for line in header_lines:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        body = (await reader.readexactly(length)).decode() if length else ""
        split = urlsplit(target)
        params = dict(parse_qsl(body or split.query, keep_blank_values=True))
        request = Request(
            method, split.path, params, headers.get("idempotency-key"), headers.get("stripe-version")
        )
        with self._lock:
            self.requests.append(request)

        fault = self._take_fault(split.path)
        if fault is not None and fault.kind == "delay":
            await asyncio.sleep(fault.seconds)
        if fault is not None and fault.kind == "fail":
            answer = _Answer(fault.status, _error("api_error", "Something went wrong on Stripe's end."))
        elif headers.get("authorization") != f"Bearer {self.api_key}":
            answer = _Answer(401, _error("invalid_request_error", "Invalid API Key provided"))
        else:
            answer = self._answer(request)
        if fault is not None and fault.kind == "drop":
            writer.transport.abort()  # the work is done, the answer is lost
            return
        payload = json.dumps(answer.body).encode()
        extra = "Idempotent-Replayed: true\r\n" if answer.replayed else ""
        writer.write(
            (
                f"HTTP/1.1 {answer.status} {REASONS.get(answer.status, 'Error')}\r\n"
                "Content-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\n"
                f"Request-Id: req_{next(self._ids)}\r\n"
                f"{extra}Connection: close\r\n\r\n"
            ).encode()
            + payload
        )
        await writer.drain()

    # -- the API ------------------------------------------------------------------------------

    def _answer(self, request: Request) -> _Answer:
        with self._lock:
            key = request.idempotency_key if request.method == "POST" else None
            saved = self._saved.get(key) if key else None
            if saved is not None:
                if (saved.method, saved.path, saved.params) != (request.method, request.path, request.params):
                    return _Answer(
                        400,
                        _error(
                            "idempotency_error",
                            "Keys for idempotent requests can only be used with the same parameters"
                            " they were first used with.",
                        ),
                    )
                return _Answer(saved.answer.status, saved.answer.body, replayed=True)
            answer = self._route(request)
            if key:
                self._saved[key] = _Saved(request.method, request.path, request.params, answer)
            return answer

    def _route(self, request: Request) -> _Answer:
        parts = request.path.strip("/").split("/")
        if request.method == "POST" and parts == ["v1", "payment_intents"]:
            return self._create_intent(request.params)
        if parts[:2] == ["v1", "payment_intents"] and len(parts) in (3, 4):
            intent = self.intents.get(parts[2])
            if intent is None:
                return _missing(f"No such payment_intent: '{parts[2]}'", "intent")
            if request.method == "GET" and len(parts) == 3:
                return _Answer(200, dict(intent))
            if request.method == "POST" and len(parts) == 4 and parts[3] == "capture":
                return self._capture(intent)
            if request.method == "POST" and len(parts) == 4 and parts[3] == "cancel":
                return self._cancel(intent)
        if request.method == "POST" and parts == ["v1", "refunds"]:
            return self._refund(request.params)
        return _Answer(404, _error("invalid_request_error", f"Unrecognized request URL ({request.path})"))

    def _create_intent(self, params: dict[str, str]) -> _Answer:
        method = params.get("payment_method", "")
        if method not in (APPROVE, DECLINE, DECLINE_INSUFFICIENT_FUNDS, DECLINE_BY_STATUS):
            return _missing(f"No such PaymentMethod: '{method}'", "payment_method", status=400)
        amount = int(params["amount"])
        intent: dict[str, Any] = {
            "id": f"pi_fake{next(self._ids):06d}",
            "object": "payment_intent",
            "amount": amount,
            "amount_capturable": 0,
            "amount_received": 0,
            "currency": params["currency"],
            "capture_method": params.get("capture_method", "automatic_async"),
            "payment_method": method,
            "metadata": {k[len("metadata[") : -1]: v for k, v in params.items() if k.startswith("metadata[")},
            "last_payment_error": None,
            "status": "requires_payment_method",
        }
        self.intents[intent["id"]] = intent
        if method in DECLINE_CODES or method == DECLINE_BY_STATUS:
            decline_code = DECLINE_CODES.get(method, "insufficient_funds")
            error = {
                "type": "card_error",
                "code": "card_declined",
                "decline_code": decline_code,
                "message": "Your card was declined.",
            }
            intent["last_payment_error"] = error
            if method == DECLINE_BY_STATUS:
                return _Answer(200, dict(intent))
            return _Answer(402, {"error": {**error, "payment_intent": dict(intent)}})
        if intent["capture_method"] == "manual":
            intent.update(status="requires_capture", amount_capturable=amount)
        else:
            intent.update(status="succeeded", amount_received=amount)
        return _Answer(200, dict(intent))

    def _capture(self, intent: dict[str, Any]) -> _Answer:
        if intent["status"] != "requires_capture":
            return _unexpected_state(intent, "capture")
        intent.update(status="succeeded", amount_received=intent["amount_capturable"], amount_capturable=0)
        return _Answer(200, dict(intent))

    def _cancel(self, intent: dict[str, Any]) -> _Answer:
        if intent["status"] in ("succeeded", "canceled"):
            return _unexpected_state(intent, "cancel")
        intent.update(status="canceled", amount_capturable=0)
        return _Answer(200, dict(intent))

    def _refund(self, params: dict[str, str]) -> _Answer:
        intent = self.intents.get(params.get("payment_intent", ""))
        if intent is None:
            missing = params.get("payment_intent")
            return _missing(f"No such payment_intent: '{missing}'", "payment_intent", status=400)
        if intent["status"] != "succeeded":
            return _unexpected_state(intent, "refund")
        refunded = sum(r["amount"] for r in self.refunds.values() if r["payment_intent"] == intent["id"])
        left = intent["amount_received"] - refunded
        amount = int(params.get("amount", left))
        if left == 0:
            return _Answer(
                400,
                _error(
                    "invalid_request_error", "Charge has already been refunded.", "charge_already_refunded"
                ),
            )
        if amount > left:
            return _Answer(
                400,
                _error(
                    "invalid_request_error",
                    "Refund amount is greater than unrefunded amount.",
                    "amount_too_large",
                ),
            )
        refund = {
            "id": f"re_fake{next(self._ids):06d}",
            "object": "refund",
            "amount": amount,
            "payment_intent": intent["id"],
            "status": "succeeded",
        }
        self.refunds[refund["id"]] = refund
        return _Answer(200, dict(refund))


def _error(kind: str, message: str, code: str | None = None, **extra: Any) -> dict[str, Any]:
    error: dict[str, Any] = {"type": kind, "message": message, **extra}
    if code is not None:
        error["code"] = code
    return {"error": error}


def _missing(message: str, param: str, *, status: int = 404) -> _Answer:
    """A missing object: 404 when it is the URL's, 400 when a parameter names it."""
    return _Answer(status, _error("invalid_request_error", message, "resource_missing", param=param))


def _unexpected_state(intent: dict[str, Any], action: str) -> _Answer:
    return _Answer(
        400,
        _error(
            "invalid_request_error",
            f"This PaymentIntent's {action} could not be performed"
            f" because it has a status of {intent['status']}.",
            "payment_intent_unexpected_state",
            payment_intent=dict(intent),
        ),
    )
