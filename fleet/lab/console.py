"""Attaching a terminal to a virtual board's serial console (QEMU's unix socket), and
reading or following the console log."""

from __future__ import annotations

import contextlib
import os
import select
import socket
import sys
import termios
import time
import tty
from collections.abc import Iterator
from pathlib import Path

from fleet.errors import LabError

DETACH = b"\x1d"  # Ctrl-], as telnet


@contextlib.contextmanager
def _raw(fd: int) -> Iterator[None]:
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def attach(sock_path: Path) -> None:
    """Pump bytes between this terminal and the console until Ctrl-] or the board stops."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(str(sock_path))
    except OSError as exc:
        raise LabError(f"cannot attach to console {sock_path}: {exc.strerror or exc}") from exc
    stdin = sys.stdin.fileno()
    stdout = sys.stdout.fileno()
    with conn, _raw(stdin):
        while True:
            readable, _, _ = select.select([conn, stdin], [], [])
            if conn in readable:
                data = conn.recv(4096)
                if not data:
                    return
                os.write(stdout, data)
            if stdin in readable:
                data = os.read(stdin, 1024)
                if not data or DETACH in data:
                    conn.sendall(data.split(DETACH)[0])
                    return
                conn.sendall(data)


def print_log(path: Path, follow: bool) -> None:
    """Copy the log to stdout; with ``follow`` keep copying what is appended (Ctrl-C ends)."""
    out = sys.stdout.buffer
    try:
        handle = open(path, "rb")  # noqa: SIM115 - held open across the follow loop
    except FileNotFoundError:
        raise LabError(f"no console log yet at {path}") from None
    with handle:
        while True:
            data = handle.read(65536)
            if data:
                out.write(data)
                out.flush()
                continue
            if not follow:
                return
            time.sleep(0.2)
