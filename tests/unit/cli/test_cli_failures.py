"""Every failure the `shop` command expects is one line on stderr and exit 1 or 2, no traceback:
settings it refuses (2), a database or Redis that does not answer, a port already taken, a
migration that fails, a server that is not installed (1, or 2 when nothing was tried)."""

from __future__ import annotations

import gc
import socket
import sys
from importlib import metadata
from pathlib import Path

import pytest

from shop.cli import main
from shop.security.keys import load_keys
from shop.settings import Settings

from .clitools import RunShop, closed_port, one_line_failure


def test_version_prints_the_package_version(run_shop: RunShop) -> None:
    result = run_shop("--version")

    assert result.returncode == 0, result.stderr
    assert result.stdout == f"shop {metadata.version('shop')}\n"


@pytest.mark.parametrize(
    ("variable", "value"),
    [("SHOP_PORT", "eighty"), ("SHOP_DATABASE_URL", "mysql://db/shop"), ("SHOP_LOG_LEVEL", "LOUD")],
)
def test_a_bad_setting_is_named_in_one_line_with_exit_2(run_shop: RunShop, variable: str, value: str) -> None:
    line = one_line_failure(run_shop("migrate", env={variable: value}), 2)

    assert line.startswith(f"shop: {variable}: "), line


def test_migrate_with_the_database_unreachable_names_module_and_address_and_exits_1(
    run_shop: RunShop,
) -> None:
    port = closed_port()
    url = f"postgresql://shop:secret-pw@127.0.0.1:{port}/shop"

    line = one_line_failure(run_shop("migrate", env={"SHOP_DATABASE_URL": url}), 1)

    assert line.startswith(
        f"shop: the users database at postgresql+asyncpg://shop:***@127.0.0.1:{port}/shop "
    ), line
    assert "does not answer" in line
    assert "secret-pw" not in line


def test_one_modules_unreachable_database_stops_migrate_at_that_module(run_shop: RunShop) -> None:
    port = closed_port()
    env = {"SHOP_ORDERS_DATABASE_URL": f"postgresql://127.0.0.1:{port}/orders"}

    result = run_shop("migrate", env=env)

    assert result.stdout.splitlines() == ["users: base -> users_0002", "catalog: base -> catalog_0002"]
    assert one_line_failure(result, 1).startswith("shop: the orders database at "), result.stderr


def test_a_failing_migration_is_one_line_naming_the_module_with_exit_1(run_shop: RunShop) -> None:
    line = one_line_failure(run_shop("migrate", "users", "--downgrade", "no_such_revision"), 1)

    assert line == "shop: migrating users failed: Can't locate revision identified by 'no_such_revision'"


def test_a_broken_migration_script_is_one_line_with_exit_1(run_shop: RunShop, tmp_path: Path) -> None:
    import shutil

    migrations = tmp_path / "migrations"
    shutil.copytree(
        Path(__file__).parents[3] / "migrations", migrations, ignore=shutil.ignore_patterns("__pycache__")
    )
    (migrations / "catalog" / "versions" / "0003_broken.py").write_text(
        '"""A revision whose SQL fails."""\n'
        "from alembic import op\n\n"
        'revision = "catalog_0003"\ndown_revision = "catalog_0002"\n'
        "branch_labels = None\ndepends_on = None\n\n\n"
        "def upgrade() -> None:\n"
        '    op.execute("ALTER TABLE no_such_table ADD COLUMN x INTEGER")\n\n\n'
        "def downgrade() -> None:\n    pass\n"
    )

    result = run_shop("migrate", env={"SHOP_MIGRATIONS_DIR": str(migrations)})

    line = one_line_failure(result, 1)
    assert line.startswith("shop: migrating catalog failed: "), line
    assert "no_such_table" in line
    assert result.stdout.splitlines() == ["users: base -> users_0002"]


def test_unknown_module_is_refused_with_exit_2(run_shop: RunShop) -> None:
    line = one_line_failure(run_shop("migrate", "inventory"), 2)

    assert "unknown module(s) inventory" in line


def test_run_with_the_database_unreachable_exits_1_before_listening(run_shop: RunShop) -> None:
    port = closed_port()
    env = {"SHOP_DATABASE_URL": f"postgresql://127.0.0.1:{port}/shop"}

    line = one_line_failure(run_shop("run", "--port", str(closed_port()), env=env), 1)

    assert line.startswith("shop: the users database at "), line


def test_serve_with_its_database_not_migrated_exits_1(run_shop: RunShop) -> None:
    line = one_line_failure(run_shop("serve", "users", "--port", str(closed_port())), 1)

    assert line == (
        "shop: the users database is at base (not migrated), its head is users_0002: run `shop migrate`"
    )


def test_serve_with_redis_unreachable_exits_1(run_shop: RunShop) -> None:
    assert run_shop("migrate", "users").returncode == 0
    port = closed_port()

    result = run_shop(
        "serve",
        "users",
        "--port",
        str(closed_port()),
        env={"SHOP_REDIS_URL": f"redis://127.0.0.1:{port}/0"},
    )

    line = one_line_failure(result, 1)
    assert line.startswith(f"shop: Redis at redis://127.0.0.1:{port}/0 does not answer: "), line


def _dev_keys(env: dict[str, str]) -> None:
    """The dev key pair in the data dir, as `shop run` or `shop serve users` would leave it."""
    load_keys(Settings.from_env({"SHOP_DATA_DIR": env["SHOP_DATA_DIR"]}), generate=True)


def test_gateway_with_redis_unreachable_exits_1(run_shop: RunShop, shop_env: dict[str, str]) -> None:
    _dev_keys(shop_env)
    port = closed_port()

    result = run_shop(
        "gateway", "--port", str(closed_port()), env={"SHOP_REDIS_URL": f"redis://127.0.0.1:{port}/0"}
    )

    assert one_line_failure(result, 1).startswith(
        f"shop: Redis at redis://127.0.0.1:{port}/0 does not answer: "
    )


def test_gateway_without_a_key_to_verify_tokens_with_exits_2(run_shop: RunShop) -> None:
    line = one_line_failure(run_shop("gateway", "--port", str(closed_port())), 2)

    assert line.startswith("shop: SHOP_JWT_PUBLIC_KEY: not set and no dev key in "), line


def test_a_port_already_taken_is_one_line_with_exit_1(run_shop: RunShop) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        line = one_line_failure(run_shop("run", "--port", str(port)), 1)

    assert line.startswith(f"shop: cannot listen on http://127.0.0.1:{port}: "), line
    assert "in use" in line


def test_run_with_uvicorn_missing_says_which_extra_to_install_with_exit_2(
    clean_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # `import uvicorn` fails as if not installed
    # What earlier tests left to the garbage collector (a connection of a closed loop whose
    # future nobody awaited) is logged by asyncio when collected: before this test's output.
    gc.collect()
    capsys.readouterr()

    assert main(["run", "--server", "uvicorn", "--port", str(closed_port())]) == 2

    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(
        "shop: --server uvicorn: uvicorn is not installed; install the extra `shop[uvicorn]`"
    )


def test_dlq_with_the_database_unreachable_exits_1(run_shop: RunShop) -> None:
    port = closed_port()

    line = one_line_failure(
        run_shop("dlq", "list", env={"SHOP_DATABASE_URL": f"postgresql://127.0.0.1:{port}/x"}), 1
    )

    assert line.startswith("shop: the users database at "), line


def test_admin_create_with_the_database_unreachable_exits_1(run_shop: RunShop) -> None:
    port = closed_port()
    env = {"SHOP_USERS_DATABASE_URL": f"postgresql://127.0.0.1:{port}/users"}

    result = run_shop(
        "admin", "create", "--email", "root@example.com", "--password-stdin", env=env, stdin="long-enough-1\n"
    )

    assert one_line_failure(result, 1).startswith("shop: the users database at "), result.stderr
