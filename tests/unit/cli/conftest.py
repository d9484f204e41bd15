"""Fixtures for the `shop` command tests (see clitools.py)."""

from __future__ import annotations

from .clitools import clean_env, run_shop, shop_env, start_server

__all__ = ["clean_env", "run_shop", "shop_env", "start_server"]
