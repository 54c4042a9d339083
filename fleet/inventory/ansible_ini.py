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

from fleet.inventory.model import ALL, MAX_HOSTS, UNGROUPED, Builder

_SECTION = re.compile(r"^\[([^:\]\s]+)(?::(\w+))?\]\s*(?:#.*)?$")
_GROUP_NAME = re.compile(r"^([^:\]\s]+)\s*(?:#.*)?$")
_PORT = re.compile(r"^(?P<host>.+):(?P<port>[0-9]+)$")
_BRACKETED_PORT = re.compile(r"^\[(?P<host>.+)\]:(?P<port>[0-9]+)$")  # [2001:db8::1]:22
_RANGE = re.compile(r"\[[^\]]*:[^\]]*\]")
_PLAIN = re.compile(r"[\"'\\#]")  # a host line without these splits at blanks alone
_BLANKS = re.compile(r"[ \t\r\n]+")  # shlex's whitespace


def value(text: str) -> Any:
    """A value as Ansible's INI plugin makes it: a Python literal when ``text`` is one."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SyntaxWarning)
            parsed = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        # Ansible lets TypeError ({[1]}) and the rest escape as a failed parse; a string
        # is the kinder reading of a value nobody can use as a literal anyway.
        return text
    return _coerce(parsed)


def _coerce(item: Any) -> Any:
    # What Ansible does after literal_eval: tuples and sets become lists, bytes text,
    # and what variables cannot hold (Ellipsis, complex) goes back to a string.
    if isinstance(item, list | tuple | set | frozenset):
        return [_coerce(v) for v in item]
    if isinstance(item, dict):
        return {_coerce(k): _coerce(v) for k, v in item.items()}
    if isinstance(item, bytes):
        return item.decode("utf-8", "replace")
    if item is ...:
        return "..."
    if isinstance(item, complex):
        return str(item)
    return item


def host_pattern(pattern: str, line: int, builder: Builder) -> tuple[list[str], int | None]:
    """``name[:port]`` (``[v6address]:port`` too) -> the names its ranges expand to and
    the port, as Ansible's parse_address splits them: a colon left outside the ranges'
    brackets belongs to an IPv6 address, which takes a port only inside brackets."""
    port: int | None = None
    bracketed = _BRACKETED_PORT.match(pattern)
    plain = _PORT.match(pattern)
    if bracketed and bracketed["host"].count(":") != 1:  # one colon: [1:3]:22 is a range
        pattern, port = bracketed["host"], int(bracketed["port"])
    elif plain and ":" not in _RANGE.sub("", plain["host"]) and _balanced(plain["host"]):
        pattern, port = plain["host"], int(plain["port"])
    return expand(pattern, line, builder), port


def _balanced(text: str) -> bool:
    return text.count("[") == text.count("]")


def expand(pattern: str, line: int, builder: Builder) -> list[str]:
    """``web[01:03].example`` -> web01.example, web02.example, web03.example."""
    start = pattern.find("[")
    if start < 0:
        return [pattern]
    end = pattern.find("]", start)
    if end < 0:
        raise builder.error(line, f"host range in {pattern!r} has no closing ']'")
    head, tail = pattern[:start], pattern[end + 1 :]
    bounds = pattern[start + 1 : end].split(":")
    if len(bounds) not in (2, 3) or not bounds[1]:
        raise builder.error(
            line, f"host range in {pattern!r} must be [begin:end] or [begin:end:step]"
        )
    begin, last_text = bounds[0] or "0", bounds[1]
    try:
        step = int(bounds[2]) if len(bounds) == 3 else 1
        if step < 1:
            raise ValueError
    except ValueError:
        raise builder.error(line, f"host range in {pattern!r} has a bad step") from None
    letters = string.ascii_letters
    if len(begin) == len(last_text) == 1 and begin in letters and last_text in letters:
        if letters.index(begin) > letters.index(last_text):
            raise builder.error(line, f"host range in {pattern!r} must have begin <= end")
        items = list(letters[letters.index(begin) : letters.index(last_text) + 1 : step])
    else:
        if not (begin.isdigit() and last_text.isdigit()):
            raise builder.error(line, f"host range in {pattern!r} is not numbers or letters")
        first, last = int(begin), int(last_text)
        if (last - first) // step >= MAX_HOSTS:
            raise builder.error(line, f"host range in {pattern!r} expands past {MAX_HOSTS} hosts")
        # A leading zero fixes the width, and then both ends must have it (Ansible's rule).
        width = len(begin) if begin.startswith("0") and len(begin) > 1 else 0
        if width and len(last_text) != width:
            raise builder.error(line, f"host range in {pattern!r} needs begin and end of one width")
        items = [str(n).zfill(width) for n in range(first, last + 1, step)]
    found: list[str] = []
    for item in items:
        found.extend(expand(head + item + tail, line, builder))
        if len(found) > MAX_HOSTS:
            raise builder.error(line, f"host range in {pattern!r} expands past {MAX_HOSTS} hosts")
    return found


def _host_line(line: str, number: int, group: str, builder: Builder) -> None:
    if _PLAIN.search(line) is None:
        # Nothing shlex would treat specially: the same tokens, many times faster.
        tokens = _BLANKS.split(line.strip(" \t\r\n"))
    else:
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError as exc:
            raise builder.error(number, f"cannot split host line: {exc}") from None
    if not tokens:
        return
    variables: dict[str, Any] = {}
    for token in tokens[1:]:
        key, sep, rest = token.partition("=")
        if not sep or not key:
            raise builder.error(number, f"expected key=value after the host, got {token!r}")
        variables[key] = value(rest)
    names, port = host_pattern(tokens[0], number, builder)
    if tokens[0].endswith(":") and port is None:
        raise builder.error(number, f"host {tokens[0]!r} ends in ':' (a port goes after it)")
    if "---" in names:
        raise builder.error(number, "host '---' is the start of a YAML document; name it .yml")
    if port is not None:
        variables["ansible_port"] = port
    for name in names:
        builder.host(name, number, group, variables)


def parse(text: str, builder: Builder) -> None:
    group, state = UNGROUPED, "hosts"
    # Groups named by [x:vars] or [y:children] before any [x] or [x:children] declares
    # them; Ansible refuses those still undeclared at the end, naming the first.
    pending: dict[str, tuple[int, str]] = {}
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
            _host_line(line, number, group, builder)
        elif state == "vars":
            # No comments here: Ansible keeps "1 # note" whole as the value.
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
