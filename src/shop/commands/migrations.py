"""`shop migrate`: upgrade or downgrade each module's schema, say where each one is, draft a revision.

Every module is reported on its own line as soon as it is done, so a slow or failing module is
seen at once. A database that does not answer and a migration that fails are `CommandFailed`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from shop import migrate
from shop.commands.checks import database_answers
from shop.commands.failures import CommandFailed, reason
from shop.settings import Settings

Say = Callable[[str], None]
BASE = "base"


def _revisions(found: Sequence[str]) -> str:
    return ", ".join(found) if found else BASE


async def _current(settings: Settings, module: str) -> tuple[str, ...]:
    return (await migrate.current(settings, [module]))[module]


async def run(
    settings: Settings, modules: Sequence[str], say: Say, *, downgrade_to: str | None = None
) -> None:
    """Upgrade each module to head (or downgrade it to `downgrade_to`, in reverse order)."""
    order = list(reversed(modules)) if downgrade_to else list(modules)
    for module in order:
        await database_answers(settings, module)
        try:
            before = await _current(settings, module)
            if downgrade_to:
                await migrate.downgrade(settings, [module], downgrade_to)
            else:
                await migrate.upgrade(settings, [module])
            after = await _current(settings, module)
        except Exception as exc:  # any failure inside Alembic or a script is this module's migration failing
            raise CommandFailed(f"migrating {module} failed: {reason(exc)}") from exc
        if before == after:
            say(f"{module}: at {_revisions(after)}, nothing to do")
        else:
            say(f"{module}: {_revisions(before)} -> {_revisions(after)}")


async def status(settings: Settings, modules: Sequence[str], say: Say) -> None:
    """A table: per module its database's revision, its head, and what that means."""
    rows: list[tuple[str, str, str, str]] = []
    for module in modules:
        await database_answers(settings, module)
        try:
            current = await _current(settings, module)
            head = migrate.heads(module)
        except Exception as exc:  # a broken history or an unreadable version table
            raise CommandFailed(f"reading {module}'s revision failed: {reason(exc)}") from exc
        if set(current) == set(head):
            state = "up to date"
        elif not current:
            state = "not migrated"
        else:
            known = _known(module)
            state = "behind" if set(current) <= known else "unknown revision (newer than this code?)"
        rows.append((module, _revisions(current), _revisions(head), state))
    widths = [max(len(row[i]) for row in [("module", "current", "head", ""), *rows]) for i in range(3)]
    say(f"{'module':<{widths[0]}}  {'current':<{widths[1]}}  {'head':<{widths[2]}}  state")
    for module, current_text, head_text, state in rows:
        say(f"{module:<{widths[0]}}  {current_text:<{widths[1]}}  {head_text:<{widths[2]}}  {state}")


def _known(module: str) -> set[str]:
    from alembic.script import ScriptDirectory

    scripts = ScriptDirectory.from_config(migrate.alembic_config(module))
    return {script.revision for script in scripts.walk_revisions()}


async def revision(module: str, message: str, say: Say, *, empty: bool = False) -> Path:
    """Draft the module's next revision (see `shop.migrate.revision`) and say where it is."""
    try:
        path = await migrate.revision(module, message, empty=empty)
    except migrate.MigrationError as exc:
        raise CommandFailed(f"{module}: {exc}") from exc
    except Exception as exc:  # a script that fails on the scratch database, Alembic refusing
        raise CommandFailed(f"drafting a revision of {module} failed: {reason(exc)}") from exc
    if path is None:
        raise CommandFailed(
            f"{module}: its tables match its migrations, nothing to write "
            "(--empty writes a revision to fill in by hand)"
        )
    say(f"{module}: wrote {_shown(path)}; review it before committing")
    return path


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
