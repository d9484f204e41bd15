"""Operations endpoints (no auth): /health, /ready, /metrics; and the admin services view."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

from litestar import Controller, Request, Response, get
from litestar.datastructures import State
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from shop.gateway.problems import problem
from shop.observability import metrics as shop_metrics
from shop.security.guards import admin_only

Check = Callable[[], Awaitable[None]]


class Describe(Protocol):
    """What `GET /api/v1/services` answers; `authorization`: the admin's, to ask further."""

    def __call__(self, *, authorization: str | None = None) -> Awaitable[dict[str, Any]]: ...


READY_TIMEOUT_S = 2.0


class OpsController(Controller):
    include_in_schema = True

    @get("/health", tags=["operations"], summary="The process lives")
    async def health(self) -> dict[str, str]:
        return {"status": "ok"}

    @get(
        "/ready",
        tags=["operations"],
        summary="Every local dependency answers",
        problems={503: "a local dependency does not answer (`detail` names it)"},
    )
    async def ready(self, state: State) -> Response[Any]:
        checks: Mapping[str, Check] = state["ready_checks"]
        results = await asyncio.gather(*(_probe(check) for check in checks.values()))
        report = dict(zip(checks, results, strict=True))
        failed = {name: error for name, error in report.items() if error is not None}
        if failed:
            detail = "; ".join(f"{name}: {error}" for name, error in sorted(failed.items()))
            return problem(503, f"not ready: {detail}", headers={"Retry-After": "5"})
        return Response({"status": "ready", "checks": dict.fromkeys(report, "ok")})

    @get("/metrics", tags=["operations"], summary="Prometheus exposition", media_type=CONTENT_TYPE_LATEST)
    async def metrics(self) -> Response[bytes]:
        await shop_metrics.refresh()  # the gauges read at scrape time (queues, sagas, breakers)
        # The header as given: Litestar would append a second `charset` to a text/* media type,
        # and a Content-Type with a duplicate parameter is rejected by strict scrapers.
        return Response(
            generate_latest(REGISTRY),
            media_type=CONTENT_TYPE_LATEST,
            headers={"content-type": CONTENT_TYPE_LATEST},
        )

    @get("/api/v1/services", guards=[admin_only], tags=["operations"], summary="Instances and breakers")
    async def services(self, request: Request[Any, Any, Any], state: State) -> dict[str, Any]:
        describe: Describe = state["describe_services"]
        # The admin's token: the gateway asks each service for its breakers with it.
        return await describe(authorization=request.headers.get("authorization"))


async def _probe(check: Check) -> str | None:
    try:
        await asyncio.wait_for(check(), READY_TIMEOUT_S)
    except Exception as exc:  # any failure of a dependency means "not ready", with its reason
        return f"{type(exc).__name__}: {exc}"[:200] or type(exc).__name__
    return None


def now_rfc3339() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")
