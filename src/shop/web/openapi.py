"""The OpenAPI document as the truth about every route: statuses, problem bodies, request schemas.

Litestar documents a route's success and, where it validates input, a 400 in its own error
shape. The shop answers errors as RFC 9457 problem details (`application/problem+json`) and
more statuses than Litestar can see, so the served document is refined here, from what each
route really does:

* 400 where a route reads a query, header or body; 401 behind `authenticated`/`admin_only`,
  403 behind `admin_only`; 404 where the path has a parameter (a malformed id matches no
  route); 408 and 413 where it reads a body (slow upload, size cap); 429 on every rate-limited path; 503 where
  it asks another module over the bus (its breaker open, no answer in time); 502, 503 and 504
  where the gateway of the split deployment proxies it (:mod:`shop.web.proxied`): the module's
  instances failed, none is healthy, or none answered in time;
* the statuses a route names itself with `problems={status: "when"}` in its decorator (e.g.
  409 for a conflict), and extra successes with Litestar's `responses=`;
* request bodies by msgspec's own JSON Schema of the type that decodes them, so every
  constraint the app enforces is stated (patterns, ranges, `additionalProperties: false` where
  unknown fields are refused) and nothing else is.

An OPTIONS answer lists every method of its path in `Allow` (see :func:`fix_options_allow`).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from http import HTTPStatus
from typing import Any, cast

import msgspec
from litestar import Litestar, Request, Response
from litestar.handlers import HTTPRouteHandler
from litestar.openapi.plugins import JsonRenderPlugin
from litestar.routes import HTTPRoute
from litestar.status_codes import HTTP_204_NO_CONTENT

from shop.security.guards import admin_only, authenticated
from shop.web.proxied import proxied

PROBLEM_JSON = "application/problem+json"
PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
UNLIMITED_PATHS = frozenset({"/health", "/ready", "/metrics"})
RETRY_AFTER = {
    "Retry-After": {
        "description": "seconds to wait before retrying",
        "required": True,
        "schema": {"type": "integer", "minimum": 0},
    }
}
PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "Problem",
    "description": "RFC 9457 problem details",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string"},
        "errors": {
            "type": "array",
            "description": "the fields a client must fix (400)",
            "items": {
                "type": "object",
                "required": ["field", "message"],
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
}
GENERIC = {
    400: "the request is invalid (`errors` names the fields)",
    401: "a valid bearer token is required",
    403: "the token's role may not do this",
    404: "no such resource (or not the caller's)",
    408: "the request body did not arrive in time (at the gateway)",
    413: "the request body is too large",
    429: "too many requests; retry after `Retry-After` seconds",
    502: "(gateway) the module's instances failed to answer; retry after `Retry-After` seconds",
    503: "a module or dependency the request needs is unavailable; retry after `Retry-After` seconds",
    504: "(gateway) the module's instances did not answer in time; retry after `Retry-After` seconds",
}
#: The statuses a problem answer carries `Retry-After` with.
RETRY_STATUSES = frozenset({429, 502, 503, 504})


def _statuses(handler: HTTPRouteHandler, path: str, operation: Mapping[str, Any]) -> dict[int, str]:
    found: dict[int, str] = {}
    reads_input = (
        bool(operation.get("parameters"))
        or "requestBody" in operation
        or "400" in operation.get("responses", {})
    )
    if reads_input:
        found[400] = GENERIC[400]
    guards = [getattr(guard, "func", guard) for guard in handler.resolve_guards()]  # unwrap AsyncCallable
    if authenticated in guards or admin_only in guards:
        found[401] = GENERIC[401]
    if admin_only in guards:
        found[403] = GENERIC[403]
    if "{" in path:
        found[404] = GENERIC[404]
    if "requestBody" in operation:
        found[408] = GENERIC[408]
        found[413] = GENERIC[413]
    if path not in UNLIMITED_PATHS:
        found[429] = GENERIC[429]
    if "bus" in handler.parsed_fn_signature.parameters:
        found[503] = GENERIC[503]
    if proxied(path):  # answered by the gateway when no instance of the module can
        for status in (502, 503, 504):
            found[status] = GENERIC[status]
    found.update(handler.opt.get("problems") or {})
    return found


def _problem_response(status: int, description: str) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description or HTTPStatus(status).phrase,
        "content": {PROBLEM_JSON: {"schema": PROBLEM_REF}},
    }
    if status in RETRY_STATUSES:
        response["headers"] = RETRY_AFTER
    return response


def _handlers(app: Litestar) -> Iterator[tuple[str, str, HTTPRouteHandler]]:
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            for method in handler.http_methods:
                if method != "OPTIONS":
                    yield route.path_format or "/", method.lower(), handler


def _body_type(handler: HTTPRouteHandler) -> tuple[Any, bool] | None:
    """The type msgspec decodes the JSON body into (e.g. `NewOrder`, `ProductChanges | None`),
    and whether a body is required."""
    data = handler.parsed_fn_signature.parameters.get("data")
    if data is None:
        return None
    structs = [data.annotation, *(inner.annotation for inner in data.inner_types)]
    if not any(isinstance(t, type) and issubclass(t, msgspec.Struct) for t in structs):
        return None
    return data.annotation, not data.has_default


def refine(app: Litestar, document: Mapping[str, Any]) -> dict[str, Any]:
    """The document with the shop's statuses, problem bodies and exact request schemas."""
    refined = copy.deepcopy(dict(document))
    components = refined.setdefault("components", {}).setdefault("schemas", {})
    components["Problem"] = PROBLEM_SCHEMA
    bodies: dict[tuple[str, str], Any] = {}
    for path, method, handler in _handlers(app):
        operation = refined.get("paths", {}).get(path, {}).get(method)
        if operation is None:
            continue
        responses = operation.setdefault("responses", {})
        for status, description in sorted(_statuses(handler, path, operation).items()):
            responses[str(status)] = _problem_response(status, description)
        body = _body_type(handler)
        if body is not None and "requestBody" in operation:
            bodies[(path, method)] = body
    if bodies:
        types = list(dict.fromkeys(annotation for annotation, _ in bodies.values()))
        schemas, defs = msgspec.json.schema_components(types, ref_template="#/components/schemas/{name}")
        components.update(defs)
        by_type = dict(zip(types, schemas, strict=True))
        for (path, method), (annotation, required) in bodies.items():
            request_body = refined["paths"][path][method]["requestBody"]
            request_body["content"] = {"application/json": {"schema": by_type[annotation]}}
            request_body["required"] = required
    return refined


class ShopOpenAPIJson(JsonRenderPlugin):
    """`/schema/openapi.json`: Litestar's document, refined once per app."""

    def __init__(self) -> None:
        super().__init__()
        self._refined: dict[int, dict[str, Any]] = {}

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        key = id(openapi_schema)
        if key not in self._refined:
            self._refined = {key: refine(request.app, openapi_schema)}
        return self.render_json(request, self._refined[key])


def fix_options_allow(app: Litestar) -> None:
    """Answer OPTIONS with every method of the path in `Allow`.

    Litestar builds a path's OPTIONS handler when the path's first handler is registered, and
    a controller registers its handlers one by one: the OPTIONS answer of a path with GET and
    PATCH named only the first. (Its 405 answers are right: they read the finished route.)
    """
    for route in app.routes:
        if not isinstance(route, HTTPRoute) or "OPTIONS" not in route.route_handler_map:
            continue
        handler, _ = route.route_handler_map["OPTIONS"]
        if handler.handler_name != "options_handler":
            continue
        allow = ", ".join(sorted(route.methods))

        def options_handler(scope: Any, allow: str = allow) -> Response[None]:
            headers = {"Allow": allow}
            return Response(None, status_code=HTTP_204_NO_CONTENT, headers=headers, media_type="text/plain")

        # The generated handler takes `scope` and is synchronous; so is this one.
        handler._fn = cast(Any, options_handler)
