"""Board locks that free themselves: an exclusive flock on one file per board.

The lock belongs to the open file, so it goes when its process dies, SIGKILL included;
there is no pid file to go stale. The holder writes who it is into the locked file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import getpass
import json
import os
import shlex
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

from fleet.errors import FleetError, LabError
from fleet.hil.labfile import Lab

POLL = 0.2
# A locked file without holder info is a holder in its first moment or a holders()
# probe; neither lasts, so even acquire(wait=0) gives it this long.
GRACE = 1.0


class BoardBusy(FleetError):
    """Another run holds the board."""


@dataclass(frozen=True)
class Holder:
    pid: int | None  # None: the file names nobody (not written yet, or unreadable)
    user: str = ""
    host: str = ""
    command: str = ""
    since: str = ""  # ISO 8601, UTC

    def __str__(self) -> str:
        if self.pid is None:
            return "an unknown holder"
        return f"pid {self.pid} ({self.user}@{self.host} since {self.since}: {self.command})"


def lock_dir() -> Path:
    """``$FLEET_HIL_LOCKS``, else ``$XDG_RUNTIME_DIR/fleet/hil-locks``, else a folder of
    this user's in /tmp. Runs share locks only when they agree on this folder."""
    if configured := os.environ.get("FLEET_HIL_LOCKS"):
        return Path(configured)
    if runtime := os.environ.get("XDG_RUNTIME_DIR"):
        return Path(runtime) / "fleet" / "hil-locks"
    return _tmp_default()


def lock_path(lab: Lab, board: str) -> Path:
    return lock_dir() / lab.name / f"{board}.lock"


class BoardLock:
    """A held board; ``release()`` or leave the ``with`` block to free it."""

    def __init__(self, lab: str, board: str, path: Path, fd: int, holder: Holder) -> None:
        self.lab = lab
        self.board = board
        self.path = path
        self.holder = holder
        self._fd: int | None = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            # So the file does not go on naming a holder that has finished.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
        finally:
            os.close(fd)

    def __enter__(self) -> BoardLock:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "held" if self.held else "released"
        return f"<BoardLock {self.lab}/{self.board} {state}>"


def acquire(lab: Lab, board: str, *, wait: float = 0) -> BoardLock:
    """Take the board, polling up to ``wait`` seconds; BoardBusy names the holder."""
    name = lab.board(board).name
    path = lock_path(lab, name)
    _make_dir(path.parent)
    try:
        # O_CLOEXEC: a program the run starts (QEMU, a console) must not keep the lock.
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    except OSError as exc:
        raise LabError(f"cannot open the lock file {path}: {exc.strerror}") from exc
    try:
        start = time.monotonic()
        while not _try_lock(fd):
            waited = time.monotonic() - start
            holder = _read_holder(fd)
            if waited >= wait and (holder.pid is not None or waited >= GRACE):
                after = f" (waited {wait:g} s)" if wait else ""
                raise BoardBusy(f"board {name!r} of lab {lab.name!r} is in use by {holder}{after}")
            time.sleep(POLL)
        me = _me()
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(dataclasses.asdict(me)).encode() + b"\n", 0)
    except BaseException:
        os.close(fd)
        raise
    return BoardLock(lab.name, name, path, fd, me)


def acquire_many(lab: Lab, names: Sequence[str], wait: float = 0) -> list[BoardLock]:
    """Take every named board, in sorted order so that two runs wanting the same boards
    cannot each hold one the other waits for; ``wait`` bounds the whole. On failure
    the boards already taken are released. The locks come back in sorted order."""
    wanted = sorted({lab.board(name).name for name in names})
    deadline = time.monotonic() + wait
    locks: list[BoardLock] = []
    try:
        for name in wanted:
            locks.append(acquire(lab, name, wait=max(0.0, deadline - time.monotonic())))
    except BaseException:
        for lock in reversed(locks):
            lock.release()
        raise
    return locks


def holders(lab: Lab) -> dict[str, Holder | None]:
    """Each board of the lab and who holds it, None when free."""
    return {board.name: _probe(lock_path(lab, board.name)) for board in lab.boards}


def _probe(path: Path) -> Holder | None:
    flags = os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        fd = os.open(path, os.O_RDWR | flags)
    except FileNotFoundError:
        return None
    except PermissionError:  # another user's lock in a shared folder: still readable
        fd = os.open(path, os.O_RDONLY | flags)
    try:
        if _try_lock(fd):
            # Free: what the file says is a dead holder's; do not leave it to be misread.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            return None
        return _read_holder(fd)
    finally:
        os.close(fd)  # drops the probe's lock, if it got one


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _read_holder(fd: int) -> Holder:
    try:
        info = json.loads(os.pread(fd, 65536, 0))
        return Holder(
            pid=int(info["pid"]),
            user=str(info["user"]),
            host=str(info["host"]),
            command=str(info["command"]),
            since=str(info["since"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return Holder(pid=None)


def _me() -> Holder:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry, as in some containers
        user = str(os.getuid())
    return Holder(
        pid=os.getpid(),
        user=user,
        host=socket.gethostname(),
        command=shlex.join(sys.orig_argv)[:1000],
        since=datetime.now(UTC).isoformat(timespec="seconds"),
    )


def _make_dir(folder: Path) -> None:
    base = lock_dir()
    try:
        base.mkdir(parents=True, exist_ok=True)
        # In /tmp anyone may have made it first: trust only a folder of our own.
        if base == _tmp_default():
            stat = os.lstat(base)
            if stat.st_uid != os.getuid() or not base.is_dir() or base.is_symlink():
                raise LabError(f"the lock folder {base} is not this user's own folder")
        folder.mkdir(exist_ok=True)
    except OSError as exc:
        raise LabError(f"cannot create the lock folder {folder}: {exc.strerror}") from exc


def _tmp_default() -> Path:
    return Path(f"/tmp/fleet-hil-locks-{os.getuid()}")
