"""What a test does with a board over the network: SSH commands and files, and HTTP to
the app's port."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fleet import ssh
from fleet.errors import RemoteError
from fleet.update.target import Target


@dataclass(frozen=True)
class Answer:
    code: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.code == 0


class Ssh:
    """A fresh connection per call: a board that rebooted in between is simply reached
    again (its pinned host key still checked). ``connect`` opens a session: the update
    key's for a board on the network, the lab's shell key for a virtual board."""

    def __init__(self, connect: Callable[[], ssh.Session]) -> None:
        self.connect = connect

    @classmethod
    def to(cls, target: Target) -> Ssh:
        return cls(target.connect)

    def run(self, command: str, *, timeout: float = 60.0, input: bytes | None = None) -> Answer:
        with self.connect() as session:
            result = session.exec(command, input=input, timeout=timeout)
        return Answer(
            result.exit_code,
            result.stdout.decode(errors="replace"),
            result.stderr.decode(errors="replace"),
        )

    def put(self, local: Path, remote: str, *, timeout: float = 120.0) -> None:
        """Copy a file to the board (through `cat`, which every image has)."""
        with local.open("rb") as handle, self.connect() as session:
            size = local.stat().st_size
            answer = session.upload_stream(
                f"cat > '{_quoted(remote)}'", handle, size, timeout=timeout
            )
        if answer.exit_code != 0:
            raise RemoteError(f"copying {local} to {remote} failed: {answer.stderr!r}")

    def get(self, remote: str, *, timeout: float = 60.0) -> bytes:
        with self.connect() as session:
            answer = session.exec(f"cat '{_quoted(remote)}'", timeout=timeout)
        if answer.exit_code != 0:
            raise RemoteError(f"reading {remote} failed: {answer.stderr!r}")
        return answer.stdout


def _quoted(path: str) -> str:
    return path.replace("'", "'\\''")


@dataclass(frozen=True)
class Http:
    base: str  # http://HOST:PORT

    def get(self, path: str, *, timeout: float = 10.0) -> tuple[int, str]:
        """(status, body) of GET ``path``; status 0 when nothing answered."""
        try:
            with urllib.request.urlopen(self.base + path, timeout=timeout) as reply:  # noqa: S310
                return reply.status, reply.read().decode(errors="replace")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")
        except (urllib.error.URLError, OSError):
            return 0, ""
