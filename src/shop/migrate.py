"""Alembic migrations, one history per module (`migrations/<module>/versions/`).

Each module's history has its own branch label and its own `alembic_version` table: in the
module's schema on PostgreSQL, in the module's own file on SQLite. `upgrade()` / `downgrade()`
run Alembic for a set of modules on one connection of each module's async engine
(`shop.db.Database`), inside `AsyncConnection.run_sync`, so the event loop never blocks on
Alembic's synchronous work; the whole run of one module is one transaction.

What every module shares lives once in `migrations/_kernel/`: the Alembic environment (`env.py`),
the revision template and the first revision, the kernel's tables (`versions/0001_kernel.py`),
which is part of every module's history as `<module>_0001` (see `kernel_revision()`). A module's
own revisions (`migrations/<module>/versions/0002_...`) follow it.

Migration scripts call `schema()` for the schema to write to (None on SQLite, else the module's
name) and `ref("table.column")` for a foreign key's target in that schema.

`revision()` drafts the next revision of a module by Alembic autogenerate: a scratch SQLite
database is migrated to head and compared with the module's metadata, and the operations found
are written with `schema=schema()` and `ref(...)`, so the draft runs on SQLite and PostgreSQL.

Note: the migrations folder is `<repository>/migrations` (found from this package's location,
which holds for a source checkout and an editable install), or `./migrations` as a fallback.
Set the environment variable `SHOP_MIGRATIONS_DIR` to point elsewhere (e.g. in a container image
where the package is installed into site-packages). It is deliberately not a Settings field: it
locates code, not configuration.
"""

from __future__ import annotations

import contextlib
import contextvars
import io
import logging
import os
import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command, op
from alembic.autogenerate import compare_metadata
from alembic.autogenerate.api import AutogenContext
from alembic.config import Config
from alembic.operations import ops
from alembic.runtime.migration import MigrationContext
from alembic.script import Script, ScriptDirectory
from sqlalchemy.engine import Connection

import shop
from shop.bus.tables import kernel_metadata
from shop.db import Database
from shop.modules import descriptor
from shop.observability.logcontext import bound_module
from shop.settings import MODULE_NAMES, Settings

__all__ = [
    "VERSION_TABLE",
    "MigrationError",
    "alembic_config",
    "create_kernel_tables_v1",
    "current",
    "diff",
    "downgrade",
    "drop_kernel_tables_v1",
    "heads",
    "kernel_revision",
    "migrations_dir",
    "module_metadata",
    "ref",
    "revision",
    "run_env",
    "schema",
    "target_metadata",
    "upgrade",
]

log = logging.getLogger(__name__)

VERSION_TABLE = "alembic_version"
MIGRATIONS_DIR_ENV = "SHOP_MIGRATIONS_DIR"
SHARED = "_kernel"  # migrations/_kernel: env.py, the template, the kernel's revision

# The module whose history Alembic is loading in this context (set by alembic_config): the shared
# kernel revision takes its id from it while its file is loaded.
_loading: contextvars.ContextVar[str] = contextvars.ContextVar("shop_migrate_loading")


class MigrationError(RuntimeError):
    """Migrations cannot run as asked; the message says why."""


# --------------------------------------------------------------------------- locating things


def migrations_dir() -> Path:
    """The folder holding `_kernel/` and `<module>/versions/` (see the module docstring)."""
    override = os.environ.get(MIGRATIONS_DIR_ENV)
    if override:
        path = Path(override).expanduser().resolve()
        if not path.is_dir():
            raise MigrationError(f"{MIGRATIONS_DIR_ENV}={override!r} is not a directory")
        return path
    candidates = [Path.cwd() / "migrations"]
    if shop.__file__ is not None:
        candidates.insert(0, Path(shop.__file__).resolve().parents[2] / "migrations")
    for path in candidates:
        if path.is_dir():
            return path
    raise MigrationError(
        f"no migrations folder at {' or '.join(map(str, candidates))}; set {MIGRATIONS_DIR_ENV}"
    )


def module_metadata(module: str) -> sa.MetaData:
    """The module's own tables: its descriptor's `metadata` (`Module("catalog", metadata=...)`)."""
    if module not in MODULE_NAMES:
        expected = ", ".join(MODULE_NAMES)
        raise MigrationError(f"unknown module {module!r}; expected one of {expected}")
    return descriptor(module).metadata or sa.MetaData()


def _modules(modules: Sequence[str] | None) -> list[str]:
    if modules is None:
        return list(MODULE_NAMES)
    if isinstance(modules, str):  # a lone name is a Sequence[str] too; take it as meant
        modules = [modules]
    for module in modules:
        module_metadata(module)
    return list(dict.fromkeys(modules))


def alembic_config(module: str, connection: Connection | None = None) -> Config:
    """A programmatic Alembic config for one module's history, sharing `connection` if given."""
    module_metadata(module)
    folder = migrations_dir()
    versions, shared = folder / module / "versions", folder / SHARED
    for needed in (versions, shared / "versions"):
        if not needed.is_dir():
            raise MigrationError(f"no migrations for {module!r}: {needed} is missing")
    config = Config()
    # Config values go through ConfigParser interpolation: escape '%' in paths.
    config.set_main_option("script_location", str(shared).replace("%", "%%"))
    config.set_main_option("path_separator", "os")
    locations = os.pathsep.join(str(p) for p in (versions, shared / "versions"))
    config.set_main_option("version_locations", locations.replace("%", "%%"))
    config.set_main_option("version_table", VERSION_TABLE)
    config.attributes["shop_module"] = module
    if connection is not None:
        config.attributes["connection"] = connection
    _loading.set(module)
    return config


def kernel_revision() -> tuple[str, tuple[str]]:
    """For migrations/_kernel/versions/0001_kernel.py: its revision id and branch label in the
    history being loaded, `("<module>_0001", ("<module>",))`."""
    module = _loading.get(None)
    if module is None:
        raise MigrationError("the kernel revision is loaded through shop.migrate.alembic_config()")
    return f"{module}_0001", (module,)


def _schema_for(connection: Connection, module: str) -> str | None:
    return None if connection.dialect.name == "sqlite" else module


# --------------------------------------------------------------------------- running Alembic


async def upgrade(settings: Settings, modules: Sequence[str] | None = None, revision: str = "head") -> None:
    """Upgrade each module's database (all modules by default) to `revision`.

    A revision other than "head" names one module's revision (e.g. "orders_0001"): pass that
    module alone. Running it again when already there does nothing.
    """
    for module in _modules(modules):
        with bound_module(module):
            log.info("migrating %s up to %s", module, revision)
            await _run(settings, module, lambda config: command.upgrade(config, revision))


async def downgrade(settings: Settings, modules: Sequence[str] | None = None, revision: str = "base") -> None:
    """Downgrade each module's database (all modules by default) to `revision`.

    Modules are taken in reverse order. The (then empty) version table stays behind.
    """
    for module in reversed(_modules(modules)):
        with bound_module(module):
            log.info("migrating %s down to %s", module, revision)
            await _run(settings, module, lambda config: command.downgrade(config, revision))


async def current(settings: Settings, modules: Sequence[str] | None = None) -> dict[str, tuple[str, ...]]:
    """The revision(s) each module's database is at; () for a database never migrated."""
    result: dict[str, tuple[str, ...]] = {}
    for module in _modules(modules):
        result[module] = await _run(settings, module, None, write=False)
    return result


def heads(module: str) -> tuple[str, ...]:
    """The head revision(s) of a module's history, as found in its scripts."""
    return tuple(ScriptDirectory.from_config(alembic_config(module)).get_heads())


async def _run(
    settings: Settings,
    module: str,
    action: Callable[[Config], None] | None,
    *,
    write: bool = True,
) -> tuple[str, ...]:
    database = Database(module, settings.database_url_for(module))
    try:
        async with database.engine.begin() as conn:
            if not database.is_sqlite and write:
                # One migrator per module at a time (replicas starting together), then the schema.
                await conn.execute(
                    sa.text("SELECT pg_advisory_xact_lock(hashtext(:key))"),
                    {"key": f"shop.migrate:{module}"},
                )
                await conn.exec_driver_sql(f'CREATE SCHEMA IF NOT EXISTS "{module}"')
            return await conn.run_sync(_run_sync, module, action)
    finally:
        await database.dispose()


def _run_sync(
    connection: Connection, module: str, action: Callable[[Config], None] | None
) -> tuple[str, ...]:
    if action is not None:
        action(alembic_config(module, connection))
    return tuple(_migration_context(connection, module).get_current_heads())


# --------------------------------------------------------------------------- inside Alembic


def run_env(module: str | None = None) -> None:
    """The body of `migrations/_kernel/env.py`: online mode on the connection we were given, for
    the module alembic_config() named."""
    from alembic import context

    if context.is_offline_mode():
        raise MigrationError("offline (--sql) migrations are not supported; run `shop migrate`")
    config = context.config
    module = module or config.attributes.get("shop_module")
    if not isinstance(module, str):
        raise MigrationError("migrations run through shop.migrate.alembic_config() (`shop migrate`)")
    connection = config.attributes.get("connection")
    if not isinstance(connection, Connection):
        raise MigrationError(
            f"migrations of {module} run on a shared connection: call shop.migrate.upgrade() or "
            "`shop migrate`, or put a Connection in Config.attributes['connection']"
        )
    config.attributes["shop_module"] = module
    context.configure(connection=connection, **_context_options(connection, module, config))
    with context.begin_transaction():
        context.run_migrations()


def _context_options(connection: Connection, module: str, config: Config | None = None) -> dict[str, Any]:
    schema_name = _schema_for(connection, module)
    version_table = VERSION_TABLE
    if config is not None:
        version_table = config.get_main_option("version_table", VERSION_TABLE) or VERSION_TABLE
    hooks: dict[str, Any] = {}
    if config is not None:  # set by revision(): how autogenerate writes its draft
        hooks = {k: v for k, v in config.attributes.items() if k in _REVISION_HOOKS}
    return {
        **hooks,
        "target_metadata": target_metadata(module, schema_name),
        "include_schemas": schema_name is not None,
        "include_name": _include_name(schema_name, version_table),
        "version_table": version_table,
        "version_table_schema": schema_name,
        "render_as_batch": schema_name is None,
        "compare_type": True,
        "compare_server_default": True,
    }


def _include_name(schema_name: str | None, version_table: str) -> Callable[..., bool]:
    def include(name: str | None, type_: str, parent_names: Mapping[str, str | None]) -> bool:
        if type_ == "schema":
            return name == schema_name
        if type_ == "table":
            return name != version_table
        return True

    return include


def _migration_context(connection: Connection, module: str) -> MigrationContext:
    return MigrationContext.configure(connection, opts=_context_options(connection, module))


def schema() -> str | None:
    """For migration scripts: the schema to create tables in (None on SQLite, else the module)."""
    context = op.get_context()
    if context.dialect.name == "sqlite":
        return None
    config = context.config
    module = config.attributes.get("shop_module") if config is not None else None
    if not isinstance(module, str):
        raise MigrationError("schema() is for migration scripts run through shop.migrate")
    return module


def ref(target: str) -> str:
    """For migration scripts: a foreign key's target ("table.column") in the module's schema."""
    s = schema()
    return f"{s}.{target}" if s else target


def target_metadata(module: str, schema_name: str | None) -> sa.MetaData:
    """The kernel's tables and the module's, copied into `schema_name` (None: no schema).

    This is what the module's migrated database must equal. The copies keep the original names
    of indexes and constraints (a copy would otherwise derive new names from the new schema).
    """
    target = sa.MetaData(schema=schema_name)

    def referred_schema(
        table: sa.Table, to_schema: str | None, fk: sa.ForeignKeyConstraint, referred: str | None
    ) -> Any:
        # A foreign key within the same schema (module or kernel) follows the table.
        if referred != table.schema:
            return referred
        return sa.schema.BLANK_SCHEMA if schema_name is None else schema_name

    for source in (kernel_metadata, module_metadata(module)):
        for table in source.sorted_tables:
            # schema=None is documented as "the target MetaData's schema"; the stub omits None.
            copy = table.to_metadata(
                target,
                schema=None,  # type: ignore[arg-type]
                referred_schema_fn=referred_schema,
            )
            _keep_names(table, copy)
    return target


def _keep_names(original: sa.Table, copy: sa.Table) -> None:
    def key(item: sa.Index | sa.Constraint) -> tuple[str, tuple[str, ...], bool]:
        columns: tuple[str, ...] = tuple(str(c) for c in getattr(item, "expressions", ())) or tuple(
            c.name for c in getattr(item, "columns", ())
        )
        return (type(item).__name__, columns, bool(getattr(item, "unique", False)))

    items: list[sa.Index | sa.Constraint] = [*original.indexes, *original.constraints]
    names = {key(item): item.name for item in items if item.name is not None}
    copies: list[sa.Index | sa.Constraint] = [*copy.indexes, *copy.constraints]
    for item in copies:
        name = names.get(key(item))
        if name is not None:
            item.name = name


def diff(connection: Connection, module: str) -> list[Any]:
    """Alembic autogenerate's differences between the database and `target_metadata` ([]: none)."""
    context = _migration_context(connection, module)
    return list(compare_metadata(context, target_metadata(module, _schema_for(connection, module))))


# --------------------------------------------------------------------------- new revisions

_REVISION_HOOKS = ("process_revision_directives", "render_item")
# Written as the schema of every operation of a draft, then replaced by `schema()` in its text.
_SCHEMA_MARK = "__shop_module_schema__"
_REVISION_ID = re.compile(r"^[a-z]+_(\d{4})$")


async def revision(module: str, message: str, *, empty: bool = False) -> Path | None:
    """Draft the module's next revision, `migrations/<module>/versions/<NNNN>_<slug>.py`.

    Alembic autogenerate compares a scratch SQLite database migrated to head with the module's
    tables (the kernel's and its own); the differences become the draft's operations. None, and
    nothing written, when there are none (unless `empty`: then a revision without operations,
    to be written by hand). Review a draft before committing it: autogenerate cannot see a
    renamed column or table (it drops and adds), nor data that must move.
    """
    message = message.strip()
    if not message:
        raise MigrationError("a revision needs a message (-m)")
    number = _next_number(module)
    with tempfile.TemporaryDirectory(prefix=f"shop-revision-{module}-") as scratch:
        settings = Settings(data_dir=Path(scratch))
        await upgrade(settings, [module])
        database = Database(module, settings.database_url_for(module))
        try:
            async with database.engine.begin() as conn:
                written: Path | None = await conn.run_sync(_write_revision, module, message, number, empty)
        finally:
            await database.dispose()
    return written


def _next_number(module: str) -> int:
    found = heads(module)
    if len(found) != 1:
        raise MigrationError(
            f"{module} has {len(found)} heads ({', '.join(found) or 'none'}); merge them first"
        )
    match = _REVISION_ID.match(found[0])
    if match is None or not found[0].startswith(f"{module}_"):
        raise MigrationError(f"{module}'s head {found[0]!r} is not named {module}_<NNNN>")
    return int(match.group(1)) + 1


def _write_revision(
    connection: Connection, module: str, message: str, number: int, empty: bool
) -> Path | None:
    config = alembic_config(module, connection)
    config.set_main_option("file_template", f"{number:04d}_%%(slug)s")
    found_changes: list[bool] = []

    def directives(_context: Any, _revision: Any, scripts: list[Any]) -> None:
        script = scripts[0]
        changes = not all(o.is_empty() for o in script.upgrade_ops_list)
        found_changes.append(changes)
        if not changes and not empty:
            scripts[:] = []  # nothing to write
            return
        for container in (*script.upgrade_ops_list, *script.downgrade_ops_list):
            _mark_schema(container)

    config.attributes["process_revision_directives"] = directives
    config.attributes["render_item"] = _render_item
    with contextlib.redirect_stdout(io.StringIO()):  # Alembic's "Generating ... done": the CLI says it
        result = command.revision(
            config,
            message=message,
            autogenerate=True,
            rev_id=f"{module}_{number:04d}",
            version_path=str(migrations_dir() / module / "versions"),
        )
    if not isinstance(result, Script) or result.path is None:
        return None
    path = Path(result.path)
    path.write_text(_finish_draft(path.read_text()))
    return path


def _mark_schema(container: ops.OpContainer) -> None:
    """Give every operation the schema mark (replaced by `schema()` once rendered)."""
    for operation in container.ops:
        if isinstance(operation, ops.OpContainer):
            _mark_schema(operation)
        for attribute in ("schema", "source_schema", "referent_schema"):
            if hasattr(operation, attribute) and getattr(operation, attribute) is None:
                setattr(operation, attribute, _SCHEMA_MARK)


def _render_item(type_: str, item: Any, _context: AutogenContext) -> str | bool:
    """Foreign keys as `ref("table.column")`: their targets live in the module's schema."""
    if type_ != "foreign_key" or not isinstance(item, sa.ForeignKeyConstraint):
        return False
    columns = ", ".join(repr(name) for name in item.column_keys)
    targets = ", ".join(f"ref({_fk_target(fk)!r})" for fk in item.elements)
    options = [f"{name}={getattr(item, name)!r}" for name in ("ondelete", "onupdate", "deferrable",
               "initially") if getattr(item, name)]  # fmt: skip
    if isinstance(item.name, str):
        options.insert(0, f"name={item.name!r}")
    return f"sa.ForeignKeyConstraint([{columns}], [{targets}]{''.join(', ' + o for o in options)})"


def _fk_target(fk: sa.ForeignKey) -> str:
    """ "table.column" of a foreign key's target, without any schema."""
    parts = fk.target_fullname.split(".")
    return ".".join(parts[-2:])


def _finish_draft(text: str) -> str:
    """The schema mark becomes `schema()`; imports only of what the draft uses."""
    text = text.replace(repr(_SCHEMA_MARK), "schema()").replace(f'"{_SCHEMA_MARK}"', "schema()")
    if _SCHEMA_MARK in text:
        raise MigrationError("the draft still names a placeholder schema; write this revision by hand")
    names = [name for name in ("ref", "schema") if f"{name}(" in text.split("def upgrade", 1)[-1]]
    line = f"from shop.migrate import {', '.join(names)}\n" if names else ""
    text = text.replace("from shop.migrate import schema\n", line, 1)
    if "sa." not in text.split("def upgrade", 1)[-1]:
        text = text.replace("import sqlalchemy as sa\n", "", 1)
    return text


# --------------------------------------------------------------------------- frozen revisions


def create_kernel_tables_v1() -> None:
    """Revision 0001 of every module: the kernel's tables as `shop.bus.tables` first declared them.

    Frozen: a later change to the kernel's tables gets a new function and a new revision.
    """
    s = schema()
    op.create_table(
        "outbox",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("message_type", sa.String(200), nullable=False),
        sa.Column("envelope", sa.LargeBinary(), nullable=False),
        sa.Column("traceparent", sa.String(64), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        schema=s,
    )
    op.create_index("ix_outbox_created_at", "outbox", ["created_at"], schema=s)
    op.create_table(
        "inbox",
        sa.Column("consumer", sa.String(200), nullable=False),
        sa.Column("message_id", sa.Uuid(), nullable=False),
        sa.Column("reply", sa.LargeBinary(), nullable=True),
        sa.Column("handled_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("consumer", "message_id"),
        schema=s,
    )
    op.create_table(
        "dead_letters",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("message_id", sa.Uuid(), nullable=False),
        sa.Column("message_type", sa.String(200), nullable=False),
        sa.Column("consumer", sa.String(200), nullable=False),
        sa.Column("queue", sa.String(100), nullable=False),
        sa.Column("envelope", sa.LargeBinary(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("failed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        schema=s,
    )
    op.create_table(
        "saga_instances",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("type", sa.String(100), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("step", sa.String(100), nullable=True),
        sa.Column("step_index", sa.Integer(), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("failure_reason", sa.String(100), nullable=True),
        sa.Column("step_deadline", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deadline", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("version", sa.Integer(), server_default="0", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        schema=s,
    )
    op.create_index("ix_saga_instances_status", "saga_instances", ["status"], schema=s)
    op.create_index("ix_saga_instances_next_attempt_at", "saga_instances", ["next_attempt_at"], schema=s)
    op.create_table(
        "saga_steps",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("saga_id", sa.Uuid(), nullable=False),
        sa.Column("step", sa.String(100), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["saga_id"], [f"{s}.saga_instances.id" if s else "saga_instances.id"]),
        sa.PrimaryKeyConstraint("id"),
        schema=s,
    )
    op.create_index("ix_saga_steps_saga_id", "saga_steps", ["saga_id"], schema=s)


def drop_kernel_tables_v1() -> None:
    """Undo `create_kernel_tables_v1` (frozen with it)."""
    s = schema()
    op.drop_index("ix_saga_steps_saga_id", table_name="saga_steps", schema=s)
    op.drop_table("saga_steps", schema=s)
    op.drop_index("ix_saga_instances_next_attempt_at", table_name="saga_instances", schema=s)
    op.drop_index("ix_saga_instances_status", table_name="saga_instances", schema=s)
    op.drop_table("saga_instances", schema=s)
    op.drop_table("dead_letters", schema=s)
    op.drop_table("inbox", schema=s)
    op.drop_index("ix_outbox_created_at", table_name="outbox", schema=s)
    op.drop_table("outbox", schema=s)
