"""fleet's own inventory form (docs/inventory.md):

    [defaults]                  # user, key, port, profile, known_hosts for every board
    [[boards]]                  # name, address, port, user, key, known_hosts, profile,
    [boards.settings]           #   groups, and per-board provisioning settings
    [groups.NAME]               # children = [...]

Each board's fields become the variables an Ansible inventory would give it
(address -> ansible_host, ...), so both forms go through the same rules."""

from __future__ import annotations

import re
import tomllib
from typing import Any

from fleet.inventory.model import Builder

FIELDS = {
    "address": "ansible_host",
    "port": "ansible_port",
    "user": "ansible_user",
    "key": "ansible_ssh_private_key_file",
    "known_hosts": "fleet_known_hosts",
    "profile": "fleet_profile",
}
_BOARD_KEYS = {"name", "groups", "settings", *FIELDS}
_HEADER = re.compile(r"^\s*\[\[\s*boards\s*\]\]")


def _board_lines(text: str) -> list[int]:
    return [n for n, line in enumerate(text.splitlines(), 1) if _HEADER.match(line)]


def parse(text: str, builder: Builder) -> None:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        found = re.search(r"line (\d+)", str(exc))
        raise builder.error(int(found[1]) if found else 0, f"not valid TOML: {exc}") from None
    unknown = set(doc) - {"defaults", "boards", "groups"}
    if unknown:
        raise builder.error(
            0, f"unknown table(s) {', '.join(sorted(unknown))} (defaults, boards, groups)"
        )
    defaults = doc.get("defaults", {})
    if not isinstance(defaults, dict) or set(defaults) - set(FIELDS) - {"address"}:
        raise builder.error(
            0, f"[defaults] may set {', '.join(k for k in FIELDS if k != 'address')}"
        )
    top = builder.group("all", 0)
    top.vars.update({FIELDS[k]: v for k, v in defaults.items()})
    groups = doc.get("groups", {})
    if not isinstance(groups, dict):
        raise builder.error(0, "[groups] must be a table of groups")
    for name, spec in groups.items():
        if not isinstance(spec, dict) or set(spec) - {"children"}:
            raise builder.error(0, f"[groups.{name}] may only set children")
        children = spec.get("children", [])
        if not isinstance(children, list) or not all(isinstance(c, str) for c in children):
            raise builder.error(0, f"[groups.{name}] children must be a list of group names")
        builder.group(name, 0)
        for child in children:
            builder.child(name, child, 0)
    boards = doc.get("boards", [])
    if not isinstance(boards, list):
        raise builder.error(0, "boards must be an array of tables ([[boards]])")
    lines = _board_lines(text)
    seen: dict[str, int] = {}
    for index, board in enumerate(boards):
        line = lines[index] if index < len(lines) else 0
        _board(board, line, builder, seen)


def _board(board: Any, line: int, builder: Builder, seen: dict[str, int]) -> None:
    if not isinstance(board, dict):
        raise builder.error(line, "a board must be a table")
    extra = set(board) - _BOARD_KEYS
    if extra:
        raise builder.error(line, f"unknown key(s) {', '.join(sorted(extra))} for a board")
    name = board.get("name")
    if not isinstance(name, str) or not name:
        raise builder.error(line, "a board needs a name")
    if name in seen:
        raise builder.error(line, f"board {name!r} is listed twice (first at line {seen[name]})")
    seen[name] = line
    if not isinstance(board.get("address"), str) or not board["address"]:
        raise builder.error(line, f"board {name!r} has no address")
    settings = board.get("settings", {})
    if not isinstance(settings, dict):
        raise builder.error(line, f"board {name!r}: settings must be a table")
    groups = board.get("groups", [])
    if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
        raise builder.error(line, f"board {name!r}: groups must be a list of names")
    variables: dict[str, Any] = {FIELDS[k]: v for k, v in board.items() if k in FIELDS}
    variables.update({f"fleet_setting_{k}": v for k, v in settings.items()})
    builder.host(name, line, None if groups else "ungrouped", variables)
    for group in groups:
        builder.host(name, line, group, {})
