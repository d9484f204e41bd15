"""Backward compatibility of one message's JSON schema (msgspec.json.schema) against its last
released form.

A change is compatible when a consumer running either version decodes what a producer running
the other sends during a rolling deploy:

- a field removed, renamed (= removed + added) or retyped breaks it;
- a new field breaks it unless it has a default (old producers do not send it);
- an optional field made required breaks it (old producers may leave it out);
- the same rules apply inside nested structs (lines, snapshots), whatever their class names;
- docstrings, titles and default values are not part of the wire and may change freely.
"""

from __future__ import annotations

from typing import Any

IGNORED = frozenset({"title", "description", "default", "examples"})
Schema = dict[str, Any]


def breaks(old: Schema, new: Schema) -> list[str]:
    """Every backward-incompatible difference from `old` to `new`, as readable lines."""
    found: list[str] = []
    _compare(old, new, "", old.get("$defs", {}), new.get("$defs", {}), found, set())
    return found


def _resolve(node: Any, defs: dict[str, Any]) -> tuple[Any, str | None]:
    if isinstance(node, dict) and "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        return defs[name], name
    return node, None


def _compare(
    old: Any,
    new: Any,
    path: str,
    old_defs: dict[str, Any],
    new_defs: dict[str, Any],
    found: list[str],
    seen: set[tuple[str | None, str | None]],
) -> None:
    old, old_ref = _resolve(old, old_defs)
    new, new_ref = _resolve(new, new_defs)
    if old_ref is not None or new_ref is not None:
        if (old_ref, new_ref) in seen:  # a recursive struct, already being compared
            return
        seen = seen | {(old_ref, new_ref)}
    where = path or "the message"
    if isinstance(old, dict) and isinstance(new, dict):
        if "properties" in old and "properties" in new:
            _compare_structs(old, new, path, old_defs, new_defs, found, seen)
            return
        old_keys = set(old) - IGNORED
        new_keys = set(new) - IGNORED
        if old_keys != new_keys:
            found.append(f"{where} retyped: {_shape(old)} -> {_shape(new)}")
            return
        for key in sorted(old_keys):
            _compare(old[key], new[key], path, old_defs, new_defs, found, seen)
        return
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for a, b in zip(old, new, strict=True):
            _compare(a, b, path, old_defs, new_defs, found, seen)
        return
    if old != new:
        found.append(f"{where} retyped: {_shape(old)} -> {_shape(new)}")


def _compare_structs(
    old: Schema,
    new: Schema,
    path: str,
    old_defs: dict[str, Any],
    new_defs: dict[str, Any],
    found: list[str],
    seen: set[tuple[str | None, str | None]],
) -> None:
    old_fields, new_fields = old["properties"], new["properties"]
    old_required, new_required = set(old.get("required", ())), set(new.get("required", ()))
    prefix = f"{path}." if path else ""
    for name in old_fields:
        if name not in new_fields:
            found.append(f"field {prefix}{name} removed (or renamed)")
            continue
        _compare(old_fields[name], new_fields[name], f"{prefix}{name}", old_defs, new_defs, found, seen)
        if name in new_required and name not in old_required:
            found.append(f"field {prefix}{name} became required")
    for name in new_fields:
        if name not in old_fields and name in new_required:
            found.append(f"new required field {prefix}{name} (give it a default, or add a new version)")


def _shape(node: Any) -> str:
    if isinstance(node, dict):
        return "{" + ", ".join(f"{k}: {_shape(v)}" for k, v in sorted(node.items()) if k not in IGNORED) + "}"
    if isinstance(node, list):
        return "[" + ", ".join(_shape(v) for v in node) + "]"
    return repr(node)
