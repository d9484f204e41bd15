"""The docs stand on their own and stay true: every route of the running app's OpenAPI document
is described in docs/api.md, README links that reference, and no committed markdown file
points outside the repository (to ../shared)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from shop.app import create_app
from shop.settings import Settings

ROOT = Path(__file__).parents[2]
API_DOC = ROOT / "docs" / "api.md"
HTTP_METHODS = ("get", "post", "put", "patch", "delete")


async def _openapi(tmp_path: Path) -> dict[str, Any]:
    app = create_app(Settings.from_env({}, data_dir=tmp_path / "data"))
    async with AsyncTestClient(app=app) as client:
        response = await client.get("/schema/openapi.json")
    assert response.status_code == 200
    document: dict[str, Any] = response.json()
    return document


def _committed_markdown() -> list[Path]:
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--", "*.md"], cwd=ROOT, capture_output=True, check=True, timeout=30
        ).stdout
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: every markdown file
        return [p for p in ROOT.rglob("*.md") if ".venv" not in p.parts and ".git" not in p.parts]
    return [ROOT / name for name in listed.decode().split("\0") if name]


def _routes(document: dict[str, Any]) -> set[str]:
    return {
        f"{method.upper()} {path}"
        for path, operations in document["paths"].items()
        for method in operations
        if method in HTTP_METHODS
    }


def _described() -> set[str]:
    return {
        f"{m} {p}" for m, p in re.findall(r"`(GET|POST|PUT|PATCH|DELETE) (/[^`\s]*)`", API_DOC.read_text())
    }


async def test_every_route_of_the_openapi_document_is_described_in_docs_api_md(tmp_path: Path) -> None:
    routes = _routes(await _openapi(tmp_path))

    assert len(routes) > 20  # the whole API, not an empty document
    assert sorted(routes - _described()) == []


async def test_docs_api_md_describes_no_route_the_app_does_not_serve(tmp_path: Path) -> None:
    routes = _routes(await _openapi(tmp_path))

    # the document itself is the one route it does not list
    assert sorted(_described() - routes) == ["GET /schema/openapi.json"]


def test_readme_links_the_api_reference() -> None:
    assert "(docs/api.md)" in (ROOT / "README.md").read_text()


@pytest.mark.parametrize("outside", ["../shared", "/work/shared"])
def test_no_committed_markdown_file_points_outside_the_repository(outside: str) -> None:
    files = _committed_markdown()
    assert ROOT / "README.md" in files
    assert [str(p.relative_to(ROOT)) for p in files if outside in p.read_text()] == []
