"""RFC 9457 problem details for every error the HTTP layer answers."""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import Any

from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException

from shop.bus.breaker import CircuitOpenError
from shop.bus.errors import AskTimeout
from shop.observability.loggers import get_logger

log = get_logger("shop.gateway")
PROBLEM_JSON = "application/problem+json"
RETRY_AFTER_S = 5


def problem(
    status: int,
    detail: str | None = None,
    *,
    title: str | None = None,
    errors: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
) -> Response[dict[str, Any]]:
    phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
    body: dict[str, Any] = {
        "type": f"https://shop.example/problems/{phrase.lower().replace(' ', '-')}",
        "title": title or phrase,
        "status": status,
        "detail": detail or phrase,
    }
    if errors:
        body["errors"] = errors
    return Response(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


_MISSING_FIELD = re.compile(r"^Object missing required field `([^`]+)`$")
_WHOLE_BODY = "data"  # Litestar's name for the request body as a whole


def _field_error(field: str, message: str) -> dict[str, str]:
    """Name the field a client must fix: a missing field by its own name, the body as "body"."""
    missing = _MISSING_FIELD.match(message)
    if missing:
        name = missing.group(1)
        return {"field": name if field in (_WHOLE_BODY, "body") else f"{field}.{name}", "message": message}
    if field == _WHOLE_BODY:
        if message == repr(_WHOLE_BODY):  # no body at all: Litestar reports KeyError('data')
            return {"field": "body", "message": "a JSON body is required"}
        return {"field": "body", "message": message}
    return {"field": field, "message": message}


def _field_errors(extra: Any) -> list[dict[str, str]]:
    errors: list[dict[str, str]] = []
    if isinstance(extra, list):
        for item in extra:
            if isinstance(item, dict):
                field = item.get("key") or item.get("field") or item.get("source") or "body"
                errors.append(_field_error(str(field), str(item.get("message", "invalid"))))
    elif isinstance(extra, dict):
        errors.extend({"field": str(k), "message": str(v)} for k, v in extra.items())
    return errors


def handle_validation(_request: Request[Any, Any, Any], exc: ValidationException) -> Response[Any]:
    errors = _field_errors(exc.extra) or [{"field": "body", "message": str(exc.detail)}]
    detail = exc.detail if exc.detail and "Validation failed" not in exc.detail else "the request is invalid"
    return problem(400, detail, errors=errors)


def handle_http(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    if exc.status_code >= 500:
        cause = exc.__cause__ or exc
        log.error("http.server_error", path=request.url.path, error=repr(cause), exc_info=cause)
    headers = dict(exc.headers or {})
    errors = None
    if exc.status_code == 400:
        # e.g. malformed JSON: the body as a whole is what the client must fix
        errors = _field_errors(exc.extra) or [{"field": "body", "message": str(exc.detail)}]
    return problem(exc.status_code, exc.detail, errors=errors, headers=headers or None)


def handle_undecodable(_request: Request[Any, Any, Any], exc: UnicodeDecodeError) -> Response[Any]:
    """A body that is not UTF-8 is the client's mistake, not a 500."""
    errors = [{"field": "body", "message": str(exc)}]
    return problem(400, "the request body is not valid UTF-8", errors=errors)


def handle_unavailable(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """A module's breaker is open or it did not answer in time: 503 + Retry-After, not a 500."""
    log.warning("http.dependency_unavailable", path=request.url.path, error=str(exc))
    return problem(
        503, "a dependency is unavailable; retry later", headers={"Retry-After": str(RETRY_AFTER_S)}
    )


def handle_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.error("http.unhandled", path=request.url.path, method=request.method, error=repr(exc), exc_info=exc)
    return problem(500, "an unexpected error occurred; it has been logged")


EXCEPTION_HANDLERS: dict[Any, Any] = {
    ValidationException: handle_validation,
    HTTPException: handle_http,
    UnicodeDecodeError: handle_undecodable,
    CircuitOpenError: handle_unavailable,
    AskTimeout: handle_unavailable,
    Exception: handle_unexpected,
}

__all__ = ["EXCEPTION_HANDLERS", "PROBLEM_JSON", "MediaType", "problem"]
