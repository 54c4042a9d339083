"""A deterministic writer for the kernel's initramfs format (cpio "newc"): entries in
the given order, owner root, fixed mtime, so the same files give the same bytes."""

from __future__ import annotations

import stat
from dataclasses import dataclass


@dataclass(frozen=True)
class Entry:
    path: str  # relative, no leading slash
    mode: int  # full st_mode, including the file type bits
    data: bytes = b""  # file contents, or the target of a symlink


def _header(ino: int, entry: Entry, nlink: int, mtime: int) -> bytes:
    name = entry.path.encode() + b"\0"
    fields = [
        ino,
        entry.mode,
        0,
        0,
        nlink,
        mtime,
        len(entry.data),
        0,
        0,
        0,
        0,
        len(name),
        0,
    ]
    head = b"070701" + b"".join(b"%08X" % value for value in fields)
    return head + name + _pad(len(head) + len(name))


def _pad(length: int) -> bytes:
    return b"\0" * (-length % 4)


def archive(entries: list[Entry], mtime: int = 0) -> bytes:
    parts = []
    for ino, entry in enumerate(entries, start=1):
        nlink = 2 if stat.S_ISDIR(entry.mode) else 1
        parts.append(_header(ino, entry, nlink, mtime))
        parts.append(entry.data + _pad(len(entry.data)))
    trailer = Entry("TRAILER!!!", 0)
    parts.append(_header(0, trailer, 1, 0))
    blob = b"".join(parts)
    return blob + _pad(len(blob))


def directory(path: str) -> Entry:
    return Entry(path, stat.S_IFDIR | 0o755)


def file(path: str, data: bytes, executable: bool = False) -> Entry:
    return Entry(path, stat.S_IFREG | (0o755 if executable else 0o644), data)


def symlink(path: str, target: str) -> Entry:
    return Entry(path, stat.S_IFLNK | 0o777, target.encode())
