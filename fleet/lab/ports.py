"""Free TCP ports on loopback for QEMU's host forwards."""

from __future__ import annotations

import socket


def free_loopback_port(avoid: set[int] | None = None) -> int:
    """A port nobody listens on right now. Another program may take it before QEMU
    binds it; QEMU then fails to start and says which forward it could not set up."""
    avoid = avoid or set()
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in avoid:
            return port
    raise OSError("no free loopback port found")
