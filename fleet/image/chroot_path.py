"""Paths inside an image root, resolved the way the board will see them.

An assembled root filesystem is a folder on the build host, but its symlinks point at
board paths: ``/lib -> usr/lib`` or ``libc.so.6 -> /usr/lib/.../libc.so.6``. Following
them with the host's ``os.path.realpath`` would silently read the host's own files, so
every walk here treats ``root`` as ``/`` and clamps ``..`` at it, like a chroot.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

# The kernel gives up after 40 links in one lookup; so do we.
MAX_LINKS = 40


@dataclass(frozen=True)
class Resolved:
    """Where an image path ends up: the file's path relative to the root, and every
    symlink (relative to the root) that the lookup went through, in order."""

    path: PurePosixPath
    links: tuple[PurePosixPath, ...]

    def host_path(self, root: Path) -> Path:
        return root.joinpath(*self.path.parts)


def _parts(path: str) -> list[str]:
    return [p for p in path.split("/") if p not in ("", ".")]


def resolve(root: Path, image_path: str | PurePosixPath) -> Resolved | None:
    """Resolve ``image_path`` (absolute or relative to the root) inside ``root``.

    Returns None when the path does not exist in the image, loops, or crosses a
    non-directory. The result may be any kind of file; callers check what they need.
    """
    pending = _parts(str(image_path))
    done: list[str] = []
    links: list[PurePosixPath] = []
    while pending:
        part = pending.pop(0)
        if part == "..":
            if done:
                done.pop()
            continue
        candidate = [*done, part]
        host = root.joinpath(*candidate)
        try:
            mode = host.lstat().st_mode
        except OSError:
            return None
        if stat.S_ISLNK(mode):
            if len(links) >= MAX_LINKS:
                return None
            links.append(PurePosixPath(*candidate))
            try:
                target = os.readlink(host)
            except OSError:
                return None
            if target.startswith("/"):
                done = []
            pending = _parts(target) + pending
            continue
        if pending and not stat.S_ISDIR(mode):
            return None
        done = candidate
    return Resolved(PurePosixPath(*done) if done else PurePosixPath("."), tuple(links))


def resolve_file(root: Path, image_path: str | PurePosixPath) -> Resolved | None:
    """Like ``resolve`` but only a regular file counts as found."""
    found = resolve(root, image_path)
    if found is None:
        return None
    try:
        mode = found.host_path(root).lstat().st_mode
    except OSError:
        return None
    return found if stat.S_ISREG(mode) else None
