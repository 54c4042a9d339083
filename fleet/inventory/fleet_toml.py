"""fleet's own inventory form (docs/inventory.md):

    [defaults]                  # user, key, port, profile, known_hosts, settings, vars
    [[boards]]                  # name, address, groups, and any of the above
    [boards.settings]           #   per-board provisioning settings (hostname, ...)
    [groups.NAME]               # children, and any of the defaults' keys

Each entry's fields become the variables an Ansible inventory would give it (address ->
ansible_host, ...; [defaults] is group ``all``), so both forms go through the same rules.
tomllib keeps no line numbers, so entries are found in the text by their headers."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Collection
from typing import Any

from fleet.inventory.model import (
    ALL,
    SETTING_PREFIX,
    UNGROUPED,
    Builder,
    InventoryError,
    setting_text,
)

# TOML key -> the Ansible variable it stands for, and the type it must have.
FIELDS: dict[str, tuple[str, type]] = {
    "address": ("ansible_host", str),
    "port": ("ansible_port", int),
    "user": ("ansible_user", str),
    "key": ("ansible_ssh_private_key_file", str),
    "known_hosts": ("fleet_known_hosts", str),
    "profile": ("fleet_profile", str),
}
_SHARED = ("port", "user", "key", "known_hosts", "profile", "settings", "vars")
_RESERVED = {var for var, _ in FIELDS.values()}
_BOARD_HEADER = re.compile(r"^\s*\[\[\s*boards\s*\]\]")
_NAME = r"(?:\"([^\"]*)\"|'([^']*)'|([A-Za-z0-9_-]+))"
_GROUP_HEADER = re.compile(rf"^\s*\[\s*groups\s*\.\s*{_NAME}\s*\]")
# Where one entry ends: the next entry's header (its own sub-tables, [boards.settings]
# or [groups.x.vars], belong to it).
_ENTRY_HEADER = re.compile(
    rf"^\s*(\[\[\s*boards\s*\]\]|\[\s*(defaults|groups|groups\s*\.\s*{_NAME})\s*\])"
)


class _Text:
    """Where things are in the file, found by scanning its lines (simple on purpose: a
    header-looking line inside a multi-line string can only misplace a line number)."""

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()

    def matching(self, pattern: re.Pattern[str]) -> list[int]:
        return [n for n, line in enumerate(self.lines, 1) if pattern.match(line)]

    def first(self, pattern: str) -> int:
        found = self.matching(re.compile(pattern))
        return found[0] if found else 0

    def key(self, start: int, key: str) -> int:
        """The line of ``key = ...`` in the entry whose header is at ``start``, else
        ``start`` (the key may sit in an inline table)."""
        pattern = re.compile(rf"^\s*{re.escape(key)}\s*=")
        for number in range(start + 1, len(self.lines) + 1):
            line = self.lines[number - 1]
            if _ENTRY_HEADER.match(line):
                break
            if pattern.match(line):
                return number
        return start

    def name(self, after: int, board: Any) -> int:
        """The first line after ``after`` that says ``name = "NAME"`` of this board."""
        if not isinstance(board, dict) or not isinstance(board.get("name"), str):
            return 0
        quoted = "|".join(re.escape(q + board["name"] + q) for q in ('"', "'"))
        pattern = re.compile(rf"\bname\s*=\s*({quoted})")
        for number in range(after + 1, len(self.lines) + 1):
            if pattern.search(self.lines[number - 1]):
                return number
        return 0

    def groups(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for number, line in enumerate(self.lines, 1):
            match = _GROUP_HEADER.match(line)
            if match:
                found.setdefault(next(g for g in match.groups() if g is not None), number)
        return found


def parse(text: str, builder: Builder, profiles: Collection[str]) -> None:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        found = re.search(r"line (\d+)", str(exc))
        raise builder.error(int(found[1]) if found else 0, f"not valid TOML: {exc}") from None
    where = _Text(text)
    for name in doc:
        if name not in ("defaults", "boards", "groups"):
            line = where.first(rf"^\s*(\[+\s*{re.escape(name)}\b|{re.escape(name)}\s*=)")
            raise builder.error(line, f"unknown table {name!r} (expected defaults, boards, groups)")
    if "defaults" in doc:
        line = where.first(r"^\s*\[\s*defaults\s*\]") or where.first(r"^\s*defaults\s*=")
        entry = _Entry(builder, where, profiles, "[defaults]", line)
        builder.group(ALL, 0).vars.update(entry.variables(doc["defaults"], _SHARED))
    declared = _groups(doc.get("groups", {}), builder, where, profiles)
    boards = doc.get("boards", [])
    if not isinstance(boards, list):
        raise builder.error(where.first(r"^\s*boards\s*="), "boards must be an array of tables")
    headers = where.matching(_BOARD_HEADER)
    seen: dict[str, int] = {}
    line = 0
    for index, board in enumerate(boards):
        if len(headers) == len(boards):
            line = headers[index]
        else:  # boards = [{...}] inline: the line of its name, or of "boards ="
            line = where.name(line, board) or where.first(r"^\s*boards\s*=")
        _board(board, _Entry(builder, where, profiles, f"board {index + 1}", line), seen)
        declared.update(board.get("groups", []))
    for group in builder.groups.values():
        for child, child_line in group.children.items():
            if child not in declared:
                raise builder.error(
                    child_line, f"group {group.name!r}: child {child!r} is not a group"
                )


class _Entry:
    """One table ([defaults], a [[boards]] entry, a [groups.NAME]) and its line."""

    def __init__(
        self, builder: Builder, where: _Text, profiles: Collection[str], what: str, line: int
    ) -> None:
        self.builder = builder
        self.where = where
        self.profiles = profiles
        self.what = what
        self.line = line

    def error(self, key: str | None, message: str) -> InventoryError:
        line = self.where.key(self.line, key) if key else self.line
        return self.builder.error(line, f"{self.what}: {message}")

    def variables(self, table: Any, allowed: Collection[str]) -> dict[str, Any]:
        """The Ansible variables the table's fields stand for, each checked."""
        if not isinstance(table, dict):
            raise self.error(None, "must be a table")
        unknown = sorted(set(table) - set(allowed))
        if unknown:
            raise self.error(unknown[0], f"unknown key {unknown[0]!r} ({', '.join(allowed)})")
        found: dict[str, Any] = {}
        for key, item in table.items():
            if key in FIELDS:
                var, kind = FIELDS[key]
                if not isinstance(item, kind) or isinstance(item, bool) or item == "":
                    wanted = "an integer" if kind is int else "a non-empty string"
                    raise self.error(key, f"{key} must be {wanted}, got {item!r}")
                if key == "profile" and item not in self.profiles:
                    known = ", ".join(sorted(self.profiles))
                    raise self.error(key, f"unknown board profile {item!r} (known: {known})")
                found[var] = item
        settings = table.get("settings", {})
        if not isinstance(settings, dict):
            raise self.error("settings", "settings must be a table")
        for key, item in settings.items():
            if setting_text(item) is None:
                raise self.error(key, f"setting {key!r} must be a string, number or boolean")
        found.update({SETTING_PREFIX + k: v for k, v in settings.items()})
        extra = table.get("vars", {})
        if not isinstance(extra, dict):
            raise self.error("vars", "vars must be a table")
        for name in extra:
            if name in _RESERVED or name.startswith(SETTING_PREFIX):
                raise self.error("vars", f"vars may not set {name!r}: it is a field of its own")
        found.update(extra)
        return found


def _groups(groups: Any, builder: Builder, where: _Text, profiles: Collection[str]) -> set[str]:
    lines = where.groups()
    if not isinstance(groups, dict):
        raise builder.error(where.first(r"^\s*groups\s*="), "groups must be a table of groups")
    for name, spec in groups.items():
        line = lines.get(name) or where.first(r"^\s*\[\s*groups\s*\]")
        entry = _Entry(builder, where, profiles, f"group {name!r}", line)
        if name in (ALL, UNGROUPED):
            raise entry.error(None, "is implicit; set what every board shares in [defaults]")
        group = builder.group(name, line)
        group.vars.update(entry.variables(spec, ("children", *_SHARED)))
        children = spec.get("children", [])
        if not isinstance(children, list) or not all(isinstance(c, str) for c in children):
            raise entry.error("children", "children must be a list of group names")
        for child in children:
            builder.child(name, child, where.key(line, "children"))
    return set(groups)


def _board(board: Any, entry: _Entry, seen: dict[str, int]) -> None:
    if not isinstance(board, dict):
        raise entry.error(None, "a board must be a table")
    name = board.get("name")
    if not isinstance(name, str) or not name:
        raise entry.error("name", "a board needs a name (a non-empty string)")
    entry.what = f"board {name!r}"
    if name in seen:
        raise entry.error("name", f"listed twice (first at line {seen[name]})")
    seen[name] = entry.line
    if "address" not in board:
        raise entry.error(None, "has no address")
    variables = entry.variables(board, ("name", "address", "groups", *_SHARED))
    groups = board.get("groups", [])
    if not isinstance(groups, list) or not all(isinstance(g, str) and g for g in groups):
        raise entry.error("groups", "groups must be a list of group names")
    if ALL in groups or UNGROUPED in groups:
        raise entry.error("groups", "all and ungrouped are implicit; leave them out")
    entry.builder.host(name, entry.line, None if groups else UNGROUPED, variables)
    for group in groups:
        entry.builder.host(name, entry.line, group, {})
