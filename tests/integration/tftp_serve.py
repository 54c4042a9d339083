"""Running ``fleet serve`` for the netboot tests: a free port on loopback, the log on a
file, and waits on what it logs."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

FLEET = str(Path(sys.executable).parent / "fleet")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Served:
    def __init__(self, proc: subprocess.Popen[str], port: int, log: Path) -> None:
        self.proc, self.port, self.log_path = proc, port, log

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_for_log(self, text: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in (found := self.log()):
                return found
            time.sleep(0.05)
        raise AssertionError(f"{text!r} never logged:\n{self.log()}")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def start(folder: Path, ready: str, *args: str) -> Served:
    """``fleet serve ARGS`` on 127.0.0.1 and a free port, once it has logged ``ready``."""
    port = free_port()
    log = folder / f"serve-{port}.log"
    proc = subprocess.Popen(
        [FLEET, "serve", *args, "--bind", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
        text=True,
    )
    served = Served(proc, port, log)
    served.wait_for_log(ready)
    return served


def serve_once(*args: str) -> subprocess.CompletedProcess[str]:
    """``fleet serve ARGS`` that is expected to stop by itself (a refusal)."""
    return subprocess.run(
        [FLEET, "serve", *args, "--bind", "127.0.0.1", "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=60,
    )
