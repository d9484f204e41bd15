"""The served OpenAPI document states what the app really answers (schemathesis checks the rest
against a running shop: tests/integration/test_schemathesis.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from shop.app import create_app
from shop.settings import Settings

ADMIN = ("admin@example.com", "admin-password")
PROBLEM = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[AsyncTestClient[Any]]:
    settings = Settings.from_env({}, data_dir=tmp_path, admin_email=ADMIN[0], admin_password=ADMIN[1])
    app = create_app(settings)
    async with AsyncTestClient(app=app) as client:
        yield client


@pytest.fixture
async def document(client: AsyncTestClient[Any]) -> dict[str, Any]:
    response = await client.get("/schema/openapi.json")
    assert response.status_code == 200
    return dict(response.json())


def _statuses(document: dict[str, Any], method: str, path: str) -> set[str]:
    return set(document["paths"][path][method]["responses"])


async def test_every_error_is_documented_as_a_problem_json_body(document: dict[str, Any]) -> None:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                if int(status) >= 400:
                    assert response["content"] == PROBLEM, (method, path, status)
    assert set(document["components"]["schemas"]["Problem"]["required"]) == {
        "type",
        "title",
        "status",
        "detail",
    }


async def test_each_route_documents_the_statuses_it_answers(document: dict[str, Any]) -> None:
    assert _statuses(document, "get", "/health") == {"200"}
    assert _statuses(document, "get", "/ready") == {"200", "503"}
    assert _statuses(document, "post", "/api/v1/orders") == {
        "200",
        "202",
        "400",
        "401",
        "408",
        "409",
        "413",
        "429",
        "502",
        "503",
        "504",
    }
    assert _statuses(document, "post", "/api/v1/orders/{order_id}/cancel") >= {
        "202", "401", "404", "409", "429", "503"
    }  # fmt: skip
    assert _statuses(document, "post", "/api/v1/products") >= {"201", "400", "401", "403", "409", "413"}
    assert _statuses(document, "post", "/api/v1/auth/token") >= {"200", "400", "401", "429"}
    assert "404" in _statuses(document, "get", "/api/v1/payments")  # another customer's order_id
    retry_after = document["paths"]["/api/v1/orders"]["get"]["responses"]["503"]["headers"]["Retry-After"]
    assert retry_after["required"] is True


async def test_what_the_gateway_proxies_documents_its_502_503_and_504_with_retry_after(
    document: dict[str, Any],
) -> None:
    """In the split deployment the gateway answers 502 (instances failed), 503 (none healthy)
    and 504 (none answered in time) on every path it proxies, not on those it answers itself."""
    proxied = 0
    for path, item in document["paths"].items():
        for method, operation in item.items():
            responses = operation["responses"]
            answered_by_gateway = path.startswith("/api/") and not path.startswith(
                ("/api/v1/services", "/api/v1/admin/dead-letters")
            )
            if answered_by_gateway:
                proxied += 1
                for status in ("502", "503", "504"):
                    assert status in responses, (method, path, status)
                    assert responses[status]["content"] == PROBLEM
                    assert responses[status]["headers"]["Retry-After"]["required"] is True
            else:
                assert not {"502", "504"} & set(responses), (method, path)
    assert proxied >= 20  # every operation of the five modules
    assert _statuses(document, "get", "/api/v1/users/me") >= {"401", "502", "503", "504"}
    assert _statuses(document, "get", "/health") == {"200"}
    assert "502" not in _statuses(document, "get", "/api/v1/services")


async def test_request_bodies_state_what_the_app_enforces(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    changes = schemas["ProductChanges"]
    assert changes["additionalProperties"] is False  # unknown fields are refused
    assert changes["properties"]["price"]["minimum"] == 0
    assert "additionalProperties" not in schemas["NewProduct"]  # unknown fields are ignored there
    patch = document["paths"]["/api/v1/products/{product_id}"]["patch"]["requestBody"]
    assert patch["required"] is False
    assert "EUR" in schemas["NewProduct"]["properties"]["currency"]["pattern"].replace("[Ee][Uu][Rr]", "EUR")
    assert schemas["NewAddress"]["properties"]["recipient"]["pattern"] == r"\S"


async def test_an_unknown_field_where_the_document_forbids_it_is_400(client: AsyncTestClient[Any]) -> None:
    login = await client.post("/api/v1/auth/token", json={"email": ADMIN[0], "password": ADMIN[1]})
    admin = {"Authorization": f"Bearer {login.json()['access_token']}"}
    response = await client.patch(
        "/api/v1/products/9b0c3a38-3a9a-4d52-9f10-8ab0a8a3b2a1", json={"stock_available": 3}, headers=admin
    )
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/problem+json")


@pytest.mark.parametrize(
    ("path", "allowed"),
    [
        ("/api/v1/products/9b0c3a38-3a9a-4d52-9f10-8ab0a8a3b2a1", "GET, OPTIONS, PATCH"),
        ("/api/v1/products", "GET, OPTIONS, POST"),
        ("/api/v1/users", "OPTIONS, POST"),
    ],
)
async def test_options_lists_every_method_of_the_path(
    client: AsyncTestClient[Any], path: str, allowed: str
) -> None:
    response = await client.options(path)
    assert response.status_code == 204
    assert response.headers["allow"] == allowed
    not_allowed = await client.delete(path)
    assert not_allowed.status_code == 405
    assert not_allowed.headers["content-type"].startswith("application/problem+json")


async def test_a_body_over_a_mebibyte_is_413_problem_json(client: AsyncTestClient[Any]) -> None:
    response = await client.post(
        "/api/v1/users",
        content=b'{"name": "' + b"x" * (1024 * 1024) + b'"}',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 413
    assert response.headers["content-type"].startswith("application/problem+json")
