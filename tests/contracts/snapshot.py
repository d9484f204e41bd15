"""The published contracts' schemas, as committed in tests/contracts/snapshot.json.

    .venv/bin/python -m tests.contracts.snapshot           # check: exit 1 on a drift or a break
    .venv/bin/python -m tests.contracts.snapshot --write   # record a compatible change
    .venv/bin/python -m tests.contracts.snapshot --retire catalog.ReserveStock.v1   # after the window
    .venv/bin/python -m tests.contracts.snapshot --unpublish orders.GetOrder.v1 --owner orders

`--write` refuses a backward-incompatible change (see compat.py): add a new version of the
message beside the old one instead. `--retire NAME` records that a version left the code once
its deprecation window is over (only when a later version of it exists). `--unpublish NAME
--owner MODULE` records that a message left the published language because only its owner ever
sends and handles it (it moved to `shop.modules.<owner>.messages`): no other module can depend on
it, so there is no window to wait for; a message another module handles cannot be unpublished.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import msgspec

import shop.contracts
from shop.bus.messages import WIRE_NAME, Message
from shop.bus.module import Module

from .compat import breaks

PATH = Path(__file__).with_name("snapshot.json")


# Where published messages live: the contracts, and the bus's own (`Rejected`). A module's own
# messages (`shop.modules.<name>.messages`) have wire names too but are not published.
PUBLISHED_IN = ("shop.contracts.", "shop.bus.")


def published_messages() -> dict[str, type[Message]]:
    """Every message of the contracts and the bus that declares a wire name."""
    for info in pkgutil.iter_modules(shop.contracts.__path__, "shop.contracts."):
        importlib.import_module(info.name)
    found = {n: c for n, c in Message.published.items() if c.__module__.startswith(PUBLISHED_IN)}
    return dict(sorted(found.items()))


def entry(cls: type[Message]) -> dict[str, Any]:
    return {"kind": cls.kind, "schema": _undocumented(msgspec.json.schema(cls))}


def _undocumented(node: Any) -> Any:
    """The schema without docstrings: they are not the wire, and Python 3.13 dedents them."""
    if isinstance(node, list):
        return [_undocumented(v) for v in node]
    if not isinstance(node, dict):
        return node
    return {
        k: ({f: _undocumented(s) for f, s in v.items()} if k == "properties" else _undocumented(v))
        for k, v in node.items()
        if not (k == "description" and isinstance(v, str))
    }


def current() -> dict[str, dict[str, Any]]:
    return {name: entry(cls) for name, cls in published_messages().items()}


def load() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(PATH.read_text())
    return data


def dump(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def family(name: str) -> tuple[str, int] | None:
    """`catalog.ReserveStock.v2` -> ("catalog.ReserveStock", 2); None for an unversioned name."""
    match = WIRE_NAME.match(name)
    if match is None:
        return None
    return f"{match['module']}.{match['name']}", int(match["version"])


def problems(recorded: dict[str, Any], code: dict[str, dict[str, Any]]) -> list[str]:
    """What makes the code incompatible with the recorded contracts."""
    found: list[str] = []
    retired = recorded.get("retired", {})
    for name, old in recorded["messages"].items():
        new = code.get(name)
        if new is None:
            if name not in retired:
                found.append(
                    f"{name} was removed: keep it until its deprecation window is over, then --retire it"
                )
            continue
        if new["kind"] != old["kind"]:
            found.append(f"{name} changed from a {old['kind']} to a {new['kind']}")
        found.extend(f"{name}: {line}" for line in breaks(old["schema"], new["schema"]))
    return found


def retire(recorded: dict[str, Any], code: dict[str, dict[str, Any]], name: str) -> None:
    parts = family(name)
    if parts is None or name not in recorded["messages"]:
        raise SystemExit(f"{name} is not a recorded versioned message")
    if name in code:
        raise SystemExit(f"{name} is still in the code: remove it (and its handlers) first")
    later = [
        n for n in (*code, *recorded["messages"]) if (f := family(n)) and f[0] == parts[0] and f[1] > parts[1]
    ]
    if not later:
        raise SystemExit(f"{name} has no later version: a message is retired by its successor")
    recorded.setdefault("retired", {})[name] = (
        f"superseded by {max(later, key=lambda n: family(n) or ('', 0))}"
    )


def unpublish(recorded: dict[str, Any], code: dict[str, dict[str, Any]], name: str, owner: str) -> None:
    if name not in recorded["messages"]:
        raise SystemExit(f"{name} is not a recorded message")
    if name in code:
        raise SystemExit(f"{name} is still published in shop.contracts: move it first")
    if not name.startswith(f"{owner}."):
        raise SystemExit(f"{name} is not {owner}'s: only a module's own messages become private")
    module = importlib.import_module(f"shop.modules.{owner}.messages")
    moved = {getattr(cls, "wire_name", None) for cls in vars(module).values() if isinstance(cls, type)}
    if name not in moved:
        raise SystemExit(f"{name} is not in shop.modules.{owner}.messages")
    recorded.setdefault("retired", {})[name] = f"unpublished: {owner}'s own message now"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.contracts.snapshot", description=__doc__)
    parser.add_argument(
        "--write", action="store_true", help="record the code's schemas (compatible changes only)"
    )
    parser.add_argument("--retire", metavar="WIRE_NAME", action="append", default=[])
    parser.add_argument("--unpublish", metavar="WIRE_NAME", action="append", default=[])
    parser.add_argument("--owner", metavar="MODULE", help="with --unpublish: the module that keeps it")
    args = parser.parse_args(argv)
    if args.unpublish and not args.owner:
        parser.error("--unpublish needs --owner")
    code = current()
    recorded = load() if PATH.exists() else {"messages": {}, "retired": {}}
    for name in args.retire:
        retire(recorded, code, name)
    for name in args.unpublish:
        unpublish(recorded, code, name, args.owner)
    found = problems(recorded, code)
    if found:
        print(
            "backward-incompatible changes (add a new version beside the old one instead):", file=sys.stderr
        )
        for line in found:
            print(f"  {line}", file=sys.stderr)
        return 1
    updated = {
        "messages": {**{n: recorded["messages"][n] for n in recorded.get("retired", {})}, **code},
        "retired": recorded.get("retired", {}),
    }
    if args.write or args.retire or args.unpublish:
        PATH.write_text(dump(updated))
        print(f"wrote {PATH} ({len(code)} messages)")
        return 0
    if dump(updated) != PATH.read_text():
        print(f"{PATH} is not current: run `python -m tests.contracts.snapshot --write`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())


def unhandled(modules: Iterable[Module], messages: dict[str, type[Message]]) -> list[str]:
    """Live versions of a message that lost a consumer the other versions have.

    While two versions of a message are in the code, producers of either may be running (a
    rolling deploy, a message retried or dead-lettered under the old one): the owner of a
    command or query handles every version, and a module subscribed to one version of an event
    subscribes to all of them."""
    families: dict[str, list[str]] = {}
    for name in messages:
        parts = family(name)
        if parts is not None:
            families.setdefault(parts[0], []).append(name)
    consumers: dict[str, set[str]] = {}
    for module in modules:
        for spec in module.handlers:
            consumers.setdefault(spec.message_type.type_name(), set()).add(module.name)
    found: list[str] = []
    for versions in families.values():
        if len(versions) < 2:
            continue
        everyone = set().union(*(consumers.get(v, set()) for v in versions))
        for version in sorted(versions):
            missing = everyone - consumers.get(version, set())
            if missing:
                found.append(f"{version} is no longer handled by {', '.join(sorted(missing))}")
    return found
