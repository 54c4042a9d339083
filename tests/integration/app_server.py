"""Runs a built example app on a loopback port and talks HTTP to it, as a user would
with curl; shared by the app build and ``fleet init`` tests."""

from __future__ import annotations

import http.client
import os
import re
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Server:
    port: int
    process: subprocess.Popen[bytes]
    log: list[str] = field(default_factory=list)

    def get(self, path: str) -> tuple[int, str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read().decode()
        finally:
            conn.close()

    def raw(self, data: bytes) -> bytes:
        """Send ``data`` as is and return whatever comes back before the server closes."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as sock:
            try:
                sock.sendall(data)
                sock.shutdown(socket.SHUT_WR)
                chunks = []
                while chunk := sock.recv(4096):
                    chunks.append(chunk)
                return b"".join(chunks)
            except OSError:
                # The server may close on a request it refuses before reading it all.
                return b""


@contextmanager
def serving(program: Path, env: dict[str, str] | None = None) -> Iterator[Server]:
    """Start ``program`` on a free loopback port (PORT=0) and yield it; its stderr log
    lines are in ``server.log`` once the block ends."""
    full_env = {k: v for k, v in os.environ.items() if k != "FLEET_APP_VERSION"}
    full_env.update({"PORT": "0", "BIND": "127.0.0.1", **(env or {})})
    process = subprocess.Popen(
        [str(program)], env=full_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    assert process.stderr is not None
    first = process.stderr.readline().decode()
    found = re.search(r"listening on 127\.0\.0\.1:(\d+)", first)
    if not found:
        process.kill()
        raise AssertionError(f"{program.name} did not start: {first!r}")
    server = Server(int(found.group(1)), process, [first.rstrip("\n")])
    try:
        yield server
        assert process.poll() is None, f"{program.name} died with exit {process.returncode}"
    finally:
        process.terminate()
        _, rest = process.communicate(timeout=30)
        server.log += rest.decode().splitlines()
