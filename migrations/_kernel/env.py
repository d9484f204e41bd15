"""The Alembic environment of every module; the logic lives in shop.migrate (run via `shop migrate`)."""

from shop.migrate import run_env

run_env()
