"""The reference for the full-stack ratio: a bare Litestar app, one GET route returning msgspec.

No gateway middleware, no bus, no databases, no logging: what Litestar on the same server can do.
Served by `shop.cli.serve` (the very server configuration `shop run` uses: granian, one worker,
uvloop, logs off), so the ratio compares apps, not server settings.

    .venv/bin/python bench/bare_app.py --port 8100 [--server granian|uvicorn]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import msgspec
from litestar import Litestar, get


class Status(msgspec.Struct):
    status: str


@get("/health")
async def health() -> Status:
    return Status("ok")


def create_app() -> Litestar:
    return Litestar(route_handlers=[health], debug=False, logging_config=None, openapi_config=None)


def main() -> int:
    from shop.cli import SERVERS, serve
    from shop.settings import Settings

    parser = argparse.ArgumentParser(description="bare Litestar reference app")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--server", choices=SERVERS, default="granian")
    args = parser.parse_args()
    # The server imports "bare_app:create_app" in its worker: make this directory importable there.
    here = str(Path(__file__).resolve().parent)
    sys.path.insert(0, here)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
    serve(Settings(host=args.host, port=args.port), "bare_app:create_app", server=args.server)
    return 0


if __name__ == "__main__":
    sys.exit(main())
