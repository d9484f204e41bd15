"""`shop migrate`: a line per module as it goes, `status` (current vs head per module), and
`revision` (an Alembic autogenerate draft that runs on SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from shop import migrate
from shop.cli import main
from shop.db import Database
from shop.modules.users import models as users_models
from shop.settings import MODULE_NAMES, Settings

ROOT = Path(__file__).parents[3]


def _out(capsys: pytest.CaptureFixture[str]) -> list[str]:
    captured = capsys.readouterr()
    assert captured.err == "", captured.err
    return captured.out.splitlines()


def test_migrate_prints_one_line_per_module_and_a_second_run_has_nothing_to_do(
    clean_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["migrate"]) == 0
    assert _out(capsys) == [f"{m}: base -> {m}_0002" for m in MODULE_NAMES]

    assert main(["migrate", "orders", "users"]) == 0
    assert _out(capsys) == ["orders: at orders_0002, nothing to do", "users: at users_0002, nothing to do"]


def test_migrate_downgrade_goes_module_by_module_in_reverse_order(
    clean_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["migrate", "users", "catalog"]) == 0
    capsys.readouterr()

    assert main(["migrate", "users", "catalog", "--downgrade", "base"]) == 0

    assert _out(capsys) == ["catalog: catalog_0002 -> base", "users: users_0002 -> base"]


def test_migrate_status_shows_each_modules_revision_against_its_head(
    clean_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["migrate", "catalog"]) == 0
    capsys.readouterr()

    assert main(["migrate", "status"]) == 0

    rows = [line.split() for line in _out(capsys)]
    assert rows[0] == ["module", "current", "head", "state"]
    table = {row[0]: row[1:] for row in rows[1:]}
    assert list(table) == list(MODULE_NAMES)
    assert table["catalog"] == ["catalog_0002", "catalog_0002", "up", "to", "date"]
    assert table["users"] == ["base", "users_0002", "not", "migrated"]


def test_migrate_status_of_some_modules_says_behind_for_an_older_revision(
    clean_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    asyncio.run(migrate.upgrade(Settings.from_env(), ["orders"], "orders_0001"))

    assert main(["migrate", "status", "orders"]) == 0

    assert _out(capsys)[1].split() == ["orders", "orders_0001", "orders_0002", "behind"]


# --------------------------------------------------------------------------- revision


@pytest.fixture
def migrations_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the migrations folder that `shop migrate` uses (SHOP_MIGRATIONS_DIR)."""
    copy = tmp_path / "migrations"
    shutil.copytree(ROOT / "migrations", copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setenv("SHOP_MIGRATIONS_DIR", str(copy))
    monkeypatch.chdir(tmp_path)
    return copy


@pytest.fixture
def notes_table() -> Iterator[sa.Table]:
    """A new table in the users module's metadata (gone again after the test)."""
    table = sa.Table(
        "notes",
        users_models.metadata,
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("user_id", sa.Uuid, sa.ForeignKey("users.users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Index("ix_notes_user", "user_id"),
    )
    yield table
    users_models.metadata.remove(table)


def _draft(migrations: Path) -> Path:
    drafts = sorted((migrations / "users" / "versions").glob("0003_*.py"))
    assert len(drafts) == 1, drafts
    return drafts[0]


def test_revision_drafts_the_new_table_in_the_modules_schema(
    clean_env: dict[str, str],
    migrations_copy: Path,
    notes_table: sa.Table,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["migrate", "revision", "users", "-m", "Notes of users"]) == 0

    draft = _draft(migrations_copy)
    assert draft.name == "0003_notes_of_users.py"
    assert _out(capsys) == [
        "users: wrote migrations/users/versions/0003_notes_of_users.py; review it before committing"
    ]
    text = draft.read_text()
    assert re.search(r"^revision: str = ['\"]users_0003['\"]$", text, re.M)
    assert re.search(r"^down_revision: .* = ['\"]users_0002['\"]$", text, re.M)
    assert "op.create_table('notes'" in text
    assert "schema=schema()" in text
    assert "[ref('users.id')], ondelete='CASCADE'" in text
    assert "from shop.migrate import ref, schema" in text


def test_the_drafted_revision_migrates_sqlite_to_exactly_the_models(
    clean_env: dict[str, str],
    migrations_copy: Path,
    notes_table: sa.Table,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["migrate", "revision", "users", "-m", "notes"]) == 0
    capsys.readouterr()

    assert main(["migrate", "users"]) == 0
    assert _out(capsys) == ["users: base -> users_0003"]
    assert asyncio.run(_diff(Settings.from_env(), "users")) == []

    assert main(["migrate", "users", "--downgrade", "users_0002"]) == 0
    assert _out(capsys) == ["users: users_0003 -> users_0002"]


@pytest.mark.postgres
def test_the_drafted_revision_migrates_postgresql_to_exactly_the_models(
    clean_env: dict[str, str],
    migrations_copy: Path,
    notes_table: sa.Table,
    own_postgres_database: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["migrate", "revision", "users", "-m", "notes"]) == 0
    monkeypatch.setenv("SHOP_DATABASE_URL", own_postgres_database)
    capsys.readouterr()

    assert main(["migrate", "users"]) == 0

    assert _out(capsys) == ["users: base -> users_0003"]
    assert asyncio.run(_diff(Settings.from_env(), "users")) == []
    assert asyncio.run(_tables_in_schema(own_postgres_database, "users")) >= {"users", "addresses", "notes"}


def test_revision_without_changes_writes_nothing_and_exits_1_unless_empty(
    clean_env: dict[str, str], migrations_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["migrate", "revision", "catalog", "-m", "nothing"]) == 1
    err = capsys.readouterr().err
    assert err == (
        "shop: catalog: its tables match its migrations, nothing to write "
        "(--empty writes a revision to fill in by hand)\n"
    )
    assert sorted(p.name for p in (migrations_copy / "catalog" / "versions").glob("*.py")) == [
        "0002_products_and_reservations.py",
    ]

    assert main(["migrate", "revision", "catalog", "-m", "Backfill by hand", "--empty"]) == 0

    written = migrations_copy / "catalog" / "versions" / "0003_backfill_by_hand.py"
    assert "revision: str = 'catalog_0003'" in written.read_text()
    assert main(["migrate", "catalog"]) == 0  # an empty revision applies
    assert capsys.readouterr().out.splitlines()[-1] == "catalog: base -> catalog_0003"


def test_revision_of_an_unknown_module_is_refused_by_the_parser(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["migrate", "revision", "inventory", "-m", "x"])

    assert exited.value.code == 2
    assert "invalid choice: 'inventory'" in capsys.readouterr().err


async def _diff(settings: Settings, module: str) -> list[object]:
    database = Database(module, settings.database_url_for(module))
    try:
        async with database.engine.connect() as conn:
            return await conn.run_sync(migrate.diff, module)
    finally:
        await database.dispose()


async def _tables_in_schema(url: str, schema: str) -> set[str]:
    database = Database(schema, url)
    try:
        async with database.engine.connect() as conn:
            rows = await conn.execute(
                sa.text("SELECT table_name FROM information_schema.tables WHERE table_schema = :s"),
                {"s": schema},
            )
            return {row[0] for row in rows}
    finally:
        await database.dispose()


@pytest.fixture
def own_postgres_database(postgres_url: str) -> Iterator[str]:
    """A PostgreSQL database of this test's own (its module schemas touch no other test's)."""
    import asyncpg

    name = f"shop_test_cli_{os.getpid()}"
    dsn = postgres_url.replace("postgresql+asyncpg://", "postgresql://")

    async def admin(*statements: str) -> None:
        conn = await asyncpg.connect(dsn)
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', f'CREATE DATABASE "{name}"'))
    yield make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
