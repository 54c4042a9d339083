"""Ansible's INI inventory, read by its plugin's rules (ansible-core's
plugins/inventory/ini.py): sections ``[group]``, ``[group:vars]``, ``[group:children]``;
hosts before any section are ungrouped; a host line is ``name[:port] key=value ...``
split like a shell line with ``#`` comments; values, inline or in ``:vars``, are Python
literals when they parse as one (``ast.literal_eval``), else strings; host names may hold
ranges like ``web[01:03]`` or ``db-[a:c]``."""

from __future__ import annotations

import ast
import re
import shlex
import string
import warnings
from typing import Any

from fleet.inventory.model import ALL, MAX_HOSTS, UNGROUPED, Builder, InventoryError

_SECTION = re.compile(r"^\[([^:\]\s]+)(?::(\w+))?\]\s*(?:#.*)?$")
_GROUP_NAME = re.compile(r"^([^:\]\s]+)\s*(?:#.*)?$")
_PORT = re.compile(r"^(?P<host>.+):(?P<port>[0-9]+)$")
_RANGE = re.compile(r"\[[^\]]*:[^\]]*\]")


def value(text: str) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SyntaxWarning)
            parsed = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text
    if parsed is ... or isinstance(parsed, complex | bytes):
        return text if parsed is ... or isinstance(parsed, bytes) else str(parsed)
    if isinstance(parsed, tuple | set):
        return list(parsed)
    return parsed


def expand(pattern: str, line: int, builder: Builder) -> list[str]:
    """``web[01:03].example`` -> web01.example, web02.example, web03.example."""
    match = _RANGE.search(pattern)
    if not match:
        return [pattern]
    head, tail = pattern[: match.start()], pattern[match.end() :]
    bounds = match.group()[1:-1].split(":")
    if len(bounds) not in (2, 3) or not bounds[1]:
        raise builder.error(line, f"host range in {pattern!r} must be begin:end[:step]")
    begin, end = bounds[0] or "0", bounds[1]
    try:
        step = int(bounds[2]) if len(bounds) == 3 else 1
        if step < 1:
            raise ValueError
    except ValueError:
        raise builder.error(line, f"host range in {pattern!r} has a bad step") from None
    if begin.isalpha() and end.isalpha() and len(begin) == len(end) == 1:
        letters = string.ascii_letters
        if letters.index(begin) > letters.index(end):
            raise builder.error(line, f"host range in {pattern!r} must have begin <= end")
        items = list(letters[letters.index(begin) : letters.index(end) + 1 : step])
    else:
        try:
            first, last = int(begin), int(end)
        except ValueError:
            raise builder.error(
                line, f"host range in {pattern!r} is not numbers or letters"
            ) from None
        if (last - first) // step >= MAX_HOSTS:
            raise builder.error(line, f"host range in {pattern!r} expands past {MAX_HOSTS} hosts")
        width = len(begin) if begin.startswith("0") and len(begin) > 1 else 0
        if width and len(end) != width:
            raise builder.error(line, f"host range in {pattern!r} needs begin and end of one width")
        items = [str(n).zfill(width) for n in range(first, last + 1, step)]
    found: list[str] = []
    for item in items:
        found.extend(expand(head + item + tail, line, builder))
        if len(found) > MAX_HOSTS:
            raise builder.error(line, f"host range in {pattern!r} expands past {MAX_HOSTS} hosts")
    return found


def _split_port(pattern: str) -> tuple[str, int | None]:
    match = _PORT.match(pattern)
    # A colon left outside the ranges' brackets is an IPv6 address, which has no port.
    if match and ":" not in _RANGE.sub("", match["host"]):
        return match["host"], int(match["port"])
    return pattern, None


def parse(text: str, builder: Builder) -> None:
    group, state = UNGROUPED, "hosts"
    pending: dict[str, tuple[int, str]] = {}  # groups named before they are declared
    declared: set[str] = {ALL, UNGROUPED}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        section = _SECTION.match(line)
        if section:
            group, state = section[1], section[2] or "hosts"
            if state not in ("hosts", "children", "vars"):
                raise builder.error(number, f"section [{group}:{state}] has unknown type {state!r}")
            builder.group(group, number)
            if state == "vars":
                if group not in declared:
                    pending.setdefault(
                        group, (number, f"section [{group}:vars] names undefined group {group!r}")
                    )
            else:
                declared.add(group)
                pending.pop(group, None)
            continue
        if line.startswith("[") and line.endswith("]"):
            raise builder.error(number, f"invalid section {line!r} (no spaces inside the brackets)")
        if state == "hosts":
            try:
                tokens = shlex.split(line, comments=True)
            except ValueError as exc:
                raise builder.error(number, f"cannot split host line: {exc}") from None
            if not tokens:
                continue
            variables: dict[str, Any] = {}
            for token in tokens[1:]:
                key, sep, rest = token.partition("=")
                if not sep or not key:
                    raise builder.error(number, f"expected key=value after the host, got {token!r}")
                variables[key] = value(rest)
            pattern, port = _split_port(tokens[0])
            if port is not None:
                variables["ansible_port"] = port
            for name in expand(pattern, number, builder):
                builder.host(name, number, group, variables)
        elif state == "vars":
            key, sep, rest = line.partition("=")
            if not sep or not key.strip():
                raise builder.error(number, f"expected key=value, got {line!r}")
            builder.group(group, number).vars[key.strip()] = value(rest.strip())
        else:
            child = _GROUP_NAME.match(line)
            if not child:
                raise builder.error(number, f"expected a group name, got {line!r}")
            if child[1] not in declared:
                pending.setdefault(
                    child[1],
                    (number, f"section [{group}:children] names undefined group {child[1]!r}"),
                )
            builder.child(group, child[1], number)
    for number, message in pending.values():
        raise builder.error(number, message)


__all__ = ["InventoryError", "parse"]
