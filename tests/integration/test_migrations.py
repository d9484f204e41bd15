"""Alembic migrations, one history per module, on SQLite files and on PostgreSQL schemas.

For every module: empty -> head gives exactly the kernel's tables and the module's own
(`alembic.autogenerate.compare_metadata` finds no difference, whatever tables the module's
metadata holds by then), and head -> base leaves nothing but the module's (empty)
`alembic_version` table. PostgreSQL runs in a database of its own, created for this session.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import create_async_engine

from shop import migrate
from shop.bus.tables import kernel_metadata
from shop.db import Database
from shop.settings import MODULE_NAMES, Settings

T = TypeVar("T")
BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


async def _admin(dsn: str, *statements: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def migrations_pg_url(postgres_url: str) -> Iterator[str]:
    """A PostgreSQL database of this test session's own (no other test touches its schemas)."""
    name = f"shop_test_migrations_{os.getpid()}"
    dsn = postgres_url.replace("postgresql+asyncpg://", "postgresql://")
    asyncio.run(_admin(dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', f'CREATE DATABASE "{name}"'))
    yield make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    asyncio.run(_admin(dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _drop_module_schemas(url: str) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            for module in MODULE_NAMES:
                await conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{module}" CASCADE')
    finally:
        await engine.dispose()


@pytest.fixture
def pg_url(backend: str, request: pytest.FixtureRequest) -> str | None:
    """The PostgreSQL URL when the backend is postgres (looked up outside the event loop)."""
    return str(request.getfixturevalue("migrations_pg_url")) if backend == "postgres" else None


@pytest.fixture
async def settings(pg_url: str | None, tmp_path: Path) -> AsyncIterator[Settings]:
    """Settings whose every module database is empty: SQLite files in a tmp dir, or PostgreSQL."""
    if pg_url is None:
        yield Settings.from_env({"SHOP_DATA_DIR": str(tmp_path / "var")})
        return
    url = pg_url
    await _drop_module_schemas(url)
    try:
        yield Settings.from_env({"SHOP_DATABASE_URL": url, "SHOP_DATA_DIR": str(tmp_path / "var")})
    finally:
        await _drop_module_schemas(url)


def _leftovers(connection: Connection, schema: str | None) -> dict[str, list[str]]:
    inspector = sa.inspect(connection)
    found = {
        "tables": sorted(inspector.get_table_names(schema=schema)),
        "views": sorted(inspector.get_view_names(schema=schema)),
    }
    if connection.dialect.name == "postgresql":
        found["sequences"] = sorted(inspector.get_sequence_names(schema=schema))
    return found


async def _in_module_db(settings: Settings, module: str, fn: Callable[..., T], *args: Any) -> T:
    """Run `fn(sync_connection, *args)` on the module's own database, as the app would reach it."""
    database = Database(module, settings.database_url_for(module))
    try:
        async with database.engine.connect() as conn:
            return await conn.run_sync(fn, *args)
    finally:
        await database.dispose()


def _version_rows(connection: Connection, schema: str | None) -> list[str]:
    table = sa.table("alembic_version", sa.column("version_num"), schema=schema)
    return [row[0] for row in connection.execute(sa.select(table.c.version_num))]


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
@pytest.mark.parametrize("module", MODULE_NAMES)
async def test_upgrade_gives_the_models_and_downgrade_removes_them(settings: Settings, module: str) -> None:
    schema = None if settings.database_url is None else module

    await migrate.upgrade(settings, [module])

    assert await migrate.current(settings, [module]) == {module: migrate.heads(module)}
    # The migrated database is exactly kernel_metadata + the module's metadata, in its schema.
    assert await _in_module_db(settings, module, migrate.diff, module) == []
    expected = {t.name for t in kernel_metadata.sorted_tables} | {
        t.name for t in migrate.module_metadata(module).sorted_tables
    }
    found = await _in_module_db(settings, module, _leftovers, schema)
    assert found["tables"] == sorted(expected | {"alembic_version"})

    await migrate.downgrade(settings, [module])

    assert await migrate.current(settings, [module]) == {module: ()}
    # Only Alembic's version table stays behind, with no row in it.
    found = await _in_module_db(settings, module, _leftovers, schema)
    assert found == {
        "tables": ["alembic_version"],
        "views": [],
        **({"sequences": []} if schema else {}),
    }
    assert await _in_module_db(settings, module, _version_rows, schema) == []


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
async def test_upgrade_twice_is_a_no_op(settings: Settings) -> None:
    await migrate.upgrade(settings)
    await migrate.upgrade(settings)

    assert await migrate.current(settings) == {m: migrate.heads(m) for m in MODULE_NAMES}
    for module in MODULE_NAMES:
        schema = None if settings.database_url is None else module
        assert await _in_module_db(settings, module, _version_rows, schema) == list(migrate.heads(module))
        assert await _in_module_db(settings, module, migrate.diff, module) == []


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
async def test_diff_notices_a_schema_that_drifted(settings: Settings) -> None:
    await migrate.upgrade(settings, ["orders"])
    database = Database("orders", settings.database_url_for("orders"))
    try:
        async with database.engine.begin() as conn:
            prefix = "" if database.is_sqlite else '"orders".'
            await conn.exec_driver_sql(f"DROP INDEX {prefix}ix_outbox_created_at")
            differences = await conn.run_sync(migrate.diff, "orders")
    finally:
        await database.dispose()
    assert [d[0] for d in differences] == ["add_index"]
    assert differences[0][1].name == "ix_outbox_created_at"


def _sqlite_tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _sqlite_versions(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return [row[0] for row in conn.execute("SELECT version_num FROM alembic_version")]


async def test_a_module_database_url_sends_that_module_to_its_own_database(tmp_path: Path) -> None:
    own = tmp_path / "elsewhere" / "orders-own.db"
    settings = Settings.from_env(
        {"SHOP_DATA_DIR": str(tmp_path / "var"), "SHOP_ORDERS_DATABASE_URL": f"sqlite:///{own}"}
    )

    await migrate.upgrade(settings)

    assert own.exists()
    assert not (tmp_path / "var" / "orders.db").exists()
    for module in MODULE_NAMES:
        path = own if module == "orders" else tmp_path / "var" / f"{module}.db"
        assert _sqlite_versions(path) == list(migrate.heads(module)), module
        assert {t.name for t in kernel_metadata.sorted_tables} <= _sqlite_tables(path)
    assert sorted(p.name for p in (tmp_path / "var").glob("*.db")) == sorted(
        f"{m}.db" for m in MODULE_NAMES if m != "orders"
    )

    await migrate.downgrade(settings, ["orders"])

    assert _sqlite_tables(own) == {"alembic_version"}
    assert _sqlite_versions(tmp_path / "var" / "users.db") == list(migrate.heads("users"))


@pytest.mark.postgres
async def test_a_module_can_live_on_postgresql_while_the_rest_stay_embedded(
    tmp_path: Path, migrations_pg_url: str
) -> None:
    await _drop_module_schemas(migrations_pg_url)
    settings = Settings.from_env(
        {"SHOP_DATA_DIR": str(tmp_path / "var"), "SHOP_PAYMENTS_DATABASE_URL": migrations_pg_url}
    )
    try:
        await migrate.upgrade(settings)
        assert await migrate.current(settings) == {m: migrate.heads(m) for m in MODULE_NAMES}
        assert not (tmp_path / "var" / "payments.db").exists()
        assert await _in_module_db(settings, "payments", _version_rows, "payments") == list(
            migrate.heads("payments")
        )
        assert await _in_module_db(settings, "payments", migrate.diff, "payments") == []
    finally:
        await _drop_module_schemas(migrations_pg_url)


def test_each_module_has_its_own_linear_history() -> None:
    seen: set[str] = set()
    for module in MODULE_NAMES:
        scripts = ScriptDirectory.from_config(migrate.alembic_config(module))
        revisions = list(scripts.walk_revisions())
        ids = {r.revision for r in revisions}
        assert all(i.startswith(f"{module}_") for i in ids), ids
        assert not ids & seen, "revision ids must be unique across modules"
        seen |= ids
        assert len(scripts.get_heads()) == 1, f"{module} has several heads"
        (base,) = [r for r in revisions if r.down_revision is None]
        assert base.branch_labels == {module}


def test_target_metadata_keeps_the_original_index_names() -> None:
    for schema in (None, "orders"):
        target = migrate.target_metadata("orders", schema)
        assert {t.schema for t in target.sorted_tables} == {schema}
        names = {i.name for t in target.sorted_tables for i in t.indexes}
        originals = {
            i.name
            for md in (kernel_metadata, migrate.module_metadata("orders"))
            for t in md.sorted_tables
            for i in t.indexes
        }
        assert names == originals


async def test_unknown_module_is_refused(tmp_path: Path) -> None:
    with pytest.raises(migrate.MigrationError, match="unknown module 'warehouse'"):
        await migrate.upgrade(Settings(data_dir=tmp_path), ["warehouse"])


def test_migrations_dir_can_be_overridden(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    default = migrate.migrations_dir()
    assert (default / "orders" / "versions").is_dir()
    copy = tmp_path / "migrations"
    shutil.copytree(default, copy)
    monkeypatch.setenv(migrate.MIGRATIONS_DIR_ENV, str(copy))
    assert migrate.migrations_dir() == copy.resolve()
    assert migrate.heads("orders") == tuple(
        ScriptDirectory.from_config(migrate.alembic_config("orders")).get_heads()
    )
    monkeypatch.setenv(migrate.MIGRATIONS_DIR_ENV, str(tmp_path / "missing"))
    with pytest.raises(migrate.MigrationError, match="not a directory"):
        migrate.migrations_dir()
