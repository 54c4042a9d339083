"""Run fleet with a pseudo-terminal as its stderr, as a person at a desk sees it."""

from __future__ import annotations

import os
import pty
import re
import signal
import subprocess
import sys
from pathlib import Path

FLEET = str(Path(sys.executable).parent / "fleet")


def as_at_a_terminal() -> None:
    # A run started in the background by a non-interactive shell (`cmd &`) ignores SIGINT,
    # and an ignored signal stays ignored across exec: fleet would never see the Ctrl-C.
    # At a desk it is not ignored.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_on_terminal(args: list[str], interrupt_on: str | None = None) -> tuple[int, str, str]:
    """Run fleet with a pseudo-terminal as its stderr, as a person at a desk sees it;
    with ``interrupt_on`` (a pattern), press Ctrl-C (SIGINT) once it has been shown.
    Returns the exit code, what the terminal showed, and stdout."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [FLEET, *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=follower,
        preexec_fn=as_at_a_terminal,
    )
    os.close(follower)
    seen = bytearray()
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the child closed its end
            break
        if not chunk:
            break
        seen += chunk
        if interrupt_on is not None and re.search(interrupt_on.encode(), seen):
            proc.send_signal(signal.SIGINT)
            interrupt_on = None
    os.close(leader)
    stdout, _ = proc.communicate(timeout=120)
    screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", seen.decode(errors="replace"))
    return proc.returncode, screen, stdout.decode(errors="replace")
