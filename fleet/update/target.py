"""How to reach a board: ``user@host[:port]`` with a key and a known_hosts file, or the
name of a virtual lab board (the lab's key and known_hosts)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import paramiko

from fleet import lab, ssh
from fleet.errors import LabError, RemoteError, UsageError

if TYPE_CHECKING:
    from fleet.inventory import Host

_USER_HOST = re.compile(
    r"^(?P<user>[A-Za-z0-9._-]+)@(?P<host>\[[0-9a-fA-F:.]+\]|[^:@\s]+)"
    r"(?::(?P<port>[0-9]{1,5}))?$"
)


@dataclass(frozen=True)
class Target:
    name: str  # as the user wrote it
    host: str
    port: int
    user: str
    key: Path
    known_hosts: Path
    trust_new_host: bool = False
    connect_timeout: float = 10.0

    def connect(
        self, timeout: float | None = None, banner_timeout: float | None = None
    ) -> ssh.Session:
        try:
            return ssh.Session.connect(
                self.host,
                self.port,
                self.user,
                self.key,
                self.known_hosts,
                trust_new=self.trust_new_host,
                timeout=timeout or self.connect_timeout,
                banner_timeout=banner_timeout,
            )
        except (paramiko.SSHException, EOFError, OSError) as exc:
            # A board that reboots mid-handshake can make paramiko raise past fleet.ssh.
            raise RemoteError(f"SSH to {self.host}:{self.port} failed: {exc}") from exc

    def after_first_contact(self) -> Target:
        # A host key trusted on first use is pinned by then; a board that comes back
        # from a reboot must present that same key.
        return Target(
            self.name,
            self.host,
            self.port,
            self.user,
            self.key,
            self.known_hosts,
            False,
            self.connect_timeout,
        )


def resolve(
    text: str,
    identity: Path | None = None,
    known_hosts: Path | None = None,
    trust_new_host: bool = False,
    connect_timeout: float = 10.0,
) -> Target:
    """``user@host[:port]`` or a lab board's name."""
    match = _USER_HOST.match(text)
    if match:
        port = int(match["port"] or 22)
        if not 1 <= port <= 65535:
            raise UsageError(f"bad port in target {text!r}")
        key = identity or _default_identity()
        return Target(
            text,
            match["host"].strip("[]"),
            port,
            match["user"],
            key,
            known_hosts or Path.home() / ".ssh" / "known_hosts",
            trust_new_host,
            connect_timeout,
        )
    if "@" in text or ":" in text:
        raise UsageError(f"bad target {text!r}: write user@host[:port] or a lab board's name")
    try:
        board = lab.get(text)
    except (UsageError, LabError) as exc:
        raise UsageError(f"{text!r} is not user@host[:port] and not a lab board ({exc})") from exc
    if identity is not None or known_hosts is not None:
        raise UsageError(
            "--identity and --known-hosts are for user@host targets; lab boards "
            "use the lab's key and known_hosts"
        )
    return Target(
        text,
        "127.0.0.1",
        board.ssh_port,
        "root",
        board.key_path,
        board.known_hosts_path,
        False,
        connect_timeout,
    )


def from_host(
    host: Host,
    identity: Path | None = None,
    trust_new_host: bool = False,
    connect_timeout: float = 10.0,
) -> Target:
    """An inventory's board: its own key and known_hosts, else ``identity`` and
    ~/.ssh/known_hosts."""
    key = host.key or identity or _default_identity()
    return Target(
        host.name,
        host.address,
        host.port,
        host.user,
        key,
        host.known_hosts or Path.home() / ".ssh" / "known_hosts",
        trust_new_host,
        connect_timeout,
    )


def _default_identity() -> Path:
    for name in ("id_ed25519", "id_ecdsa", "id_rsa"):
        path = Path.home() / ".ssh" / name
        if path.exists():
            return path
    raise UsageError("no SSH key found in ~/.ssh; give one with --identity KEY")
