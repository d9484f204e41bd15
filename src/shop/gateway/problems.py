"""RFC 9457 problem details for every error the HTTP layer answers."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import structlog
from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException

log = structlog.get_logger("shop.gateway")
PROBLEM_JSON = "application/problem+json"


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


def _field_errors(extra: Any) -> list[dict[str, str]]:
    errors: list[dict[str, str]] = []
    if isinstance(extra, list):
        for item in extra:
            if isinstance(item, dict):
                field = item.get("key") or item.get("field") or item.get("source") or "body"
                errors.append({"field": str(field), "message": str(item.get("message", "invalid"))})
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
    errors = _field_errors(exc.extra) if exc.status_code == 400 else None
    return problem(exc.status_code, exc.detail, errors=errors, headers=headers or None)


def handle_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.error("http.unhandled", path=request.url.path, method=request.method, error=repr(exc), exc_info=exc)
    return problem(500, "an unexpected error occurred; it has been logged")


EXCEPTION_HANDLERS: dict[Any, Any] = {
    ValidationException: handle_validation,
    HTTPException: handle_http,
    Exception: handle_unexpected,
}

__all__ = ["EXCEPTION_HANDLERS", "PROBLEM_JSON", "MediaType", "problem"]
