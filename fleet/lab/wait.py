"""Knowing when a virtual board is up: a line on its console (printed by the board once
its services run) and, optionally, an SSH server answering with its banner on the
forwarded port. QEMU accepts forwarded connections itself even before the guest
listens, so only the banner proves that the board's sshd is there."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable
from pathlib import Path

from fleet.errors import LabError
from fleet.lab.state import Board

POLL = 0.1
BANNER_WAIT = 1.0
# The board's boot-chart stamp for its address being set (DHCP bound, or static). Before
# it, QEMU takes the forwarded connection but cannot reach the guest, and the attempt
# waits out BANNER_WAIT; so the banner is asked for once the stamp shows, or, for a board
# that prints no such stamp, NETWORK_GRACE seconds after the up line.
NETWORK_MARKER = "] boot: network"
NETWORK_GRACE = 5.0
Note = Callable[[str], None]
_ESCAPES = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|[\x00-\x08\x0b-\x1f\x7f]")


def log_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def last_console_line(path: Path, tail: int = 4096) -> str:
    """The last non-empty console line, without terminal control bytes."""
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, 2)
            handle.seek(max(0, size - tail))
            data = handle.read()
    except FileNotFoundError:
        return "(no console output)"
    for raw in reversed(re.split(rb"[\r\n]+", data)):
        line = _ESCAPES.sub(b"", raw).decode(errors="replace").strip()
        if line:
            return line
    return "(no console output)"


def ssh_banner(port: int, timeout: float = 2.0) -> bytes | None:
    """The first line the server on 127.0.0.1:port sends, or None."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            data = b""
            while b"\n" not in data and len(data) < 256:
                chunk = sock.recv(256)
                if not chunk:
                    break
                data += chunk
            return data.split(b"\n")[0].strip() or None
    except OSError:
        return None


class ConsoleWatch:
    """Finds ``marker`` in console output written after ``offset`` (so an earlier boot's
    line in the appended log does not count)."""

    def __init__(self, path: Path, offset: int, marker: str) -> None:
        self.path = path
        self.offset = offset
        self.marker = marker.encode()
        self._carry = b""

    def seen(self) -> bool:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except FileNotFoundError:
            return False
        self.offset += len(data)
        window = self._carry + data
        if self.marker in window:
            return True
        self._carry = window[-len(self.marker) :]
        return False


def wait_up(
    board: Board, offset: int, timeout: float, note: Note, status: Note | None = None
) -> float:
    """Wait until ``board`` is up; return the seconds it took. On timeout or if QEMU
    exits, raise LabError naming the last console line and the log. ``status`` (a live
    status line) gets the elapsed time and the latest console line as the boot goes."""
    start = time.monotonic()
    deadline = start + timeout
    watch = ConsoleWatch(board.console_log, offset, board.up_line)
    network = ConsoleWatch(board.console_log, offset, NETWORK_MARKER)
    note(f"{board.name}: waiting for console line {board.up_line!r} (log: {board.console_log})")
    console_ok = False
    network_ok = False
    console_at = 0.0
    while True:
        if board.running_pid() is None:
            raise LabError(
                f"board {board.name}: QEMU exited during boot; last console line: "
                f"{last_console_line(board.console_log)!r}; console log: {board.console_log}"
            )
        if not console_ok and watch.seen():
            console_ok = True
            console_at = time.monotonic()
            took = console_at - start
            if not board.wait_ssh:
                return took
            note(
                f"{board.name}: console up after {took:.1f} s; waiting for SSH on {board.ssh_port}"
            )
        if console_ok and not network_ok:
            network_ok = network.seen() or time.monotonic() - console_at > NETWORK_GRACE
        if console_ok and network_ok:
            # QEMU accepts the connection before the guest listens; a short wait per
            # try and another try at the next poll sees the banner soon after it comes.
            banner = ssh_banner(
                board.ssh_port, timeout=min(BANNER_WAIT, max(0.1, deadline - time.monotonic()))
            )
            if banner is not None and banner.startswith(b"SSH-2.0"):
                return time.monotonic() - start
        if status is not None:
            line = last_console_line(board.console_log)
            status(f"{board.name}: {time.monotonic() - start:4.0f} s  {line[:90]}")
        if time.monotonic() >= deadline:
            waiting = "an SSH banner" if console_ok else f"console line {board.up_line!r}"
            raise LabError(
                f"board {board.name} not up after {timeout:g} s (waiting for {waiting}); "
                f"last console line: {last_console_line(board.console_log)!r}; "
                f"console log: {board.console_log}"
            )
        time.sleep(POLL)
