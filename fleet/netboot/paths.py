"""Requested TFTP file names, checked before any lookup. A name comes from the network:
anything that could reach outside a board's tree is refused, whatever its spelling."""

from __future__ import annotations

from urllib.parse import unquote

MAX_NAME = 255  # a TFTP name is one 512-byte request; boards ask for short paths


class BadPath(Exception):
    """A name that could leave the tree; ``str()`` says why, for the log."""


def clean(name: str) -> str:
    """The tree-relative path ``name`` asks for (``a/b``), or BadPath. A single leading
    ``/`` is accepted as U-Boot and some ROMs send one for the tree's root; ``..``,
    backslashes, NULs, control bytes and their URL-encoded forms are refused."""
    if not name or len(name) > MAX_NAME:
        raise BadPath("empty or overlong name")
    decoded = name
    for _ in range(3):  # %252e%252e is %2e%2e is ..
        once = unquote(decoded, errors="strict")
        if once == decoded:
            break
        decoded = once
    for form in (name, decoded):
        if "\\" in form:
            raise BadPath("backslash in name")
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in form):
            raise BadPath("control character in name")
    if decoded != name:
        raise BadPath("URL-encoded name")
    relative = name[1:] if name.startswith("/") else name
    if relative.startswith("/"):
        raise BadPath("absolute path")
    parts = relative.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise BadPath("'.', '..' or empty component")
    return relative
