"""`fleet update` when the link drops while the board answers `agent try` (it reboots
as it answers, or the network goes): the outcome is unreachable, exit 12, one line.

The board is a real SSH server on 127.0.0.1 (paramiko in a thread) that speaks the
agent's verbs and cuts the connection without an exit status on `try`."""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paramiko
import pytest

from fleet.lab.keys import ensure_client_key
from fleet.release import Health, Manifest, Payload, write_manifest
from fleet.update import machine
from fleet.update.result import Outcome
from fleet.update.target import Target

pytestmark = pytest.mark.integration

FLEET = str(Path(sys.executable).with_name("fleet"))

STATUS = {
    "board": "qemu-virt-arm64",
    "hostname": "b1",
    "boot_id": "boot-1",
    "running_slot": "A",
    "default_slot": "A",
    "trial_slot": "",
    "floor": 0,
    "health": "healthy",
    "app": {"version": "1.0.0", "release": 1},
    "last_trial": "",
}


def make_release(folder: Path) -> None:
    folder.mkdir(parents=True)
    payloads = []
    for name, file in (("boot", "boot.vfat"), ("rootfs", "rootfs.squashfs")):
        data = f"{name} bytes\n".encode() * 100
        (folder / file).write_bytes(data)
        payloads.append(Payload(name, file, len(data), hashlib.sha256(data).hexdigest()))
    health = Health(http="http://127.0.0.1:8080/health", command=None, port=8080, timeout=60)
    write_manifest(
        folder,
        Manifest("hello", "1.2.3", 7, "qemu-virt-arm64", "aarch64", tuple(payloads), health),
    )


class _Board(paramiko.ServerInterface):
    def __init__(self, client_key: paramiko.PKey, log: list[str]) -> None:
        self.client_key = client_key
        self.log = log
        self.transport: paramiko.Transport | None = None

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        if key.asbytes() == self.client_key.asbytes():
            return paramiko.AUTH_SUCCESSFUL
        return paramiko.AUTH_FAILED

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind == "session":
            return paramiko.OPEN_SUCCEEDED
        return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        text = command.decode()
        self.log.append(text)
        threading.Thread(target=self._run, args=(channel, text), daemon=True).start()
        return True

    def _run(self, channel: paramiko.Channel, command: str) -> None:
        # paramiko sends the exec request's success reply after this handler's caller
        # returns; a channel closed before that reply fails the client's exec_command.
        time.sleep(0.1)
        verb = command.split()[1] if len(command.split()) > 1 else ""
        if verb == "status":
            channel.sendall(json.dumps(STATUS).encode())
        elif verb in ("install-manifest", "install"):
            while channel.recv(65536):
                pass
        elif verb == "try":
            # The board starts rebooting while it answers: no exit status, no close.
            channel.sendall_stderr(b"trial boot of slot B\n")
            time.sleep(0.3)  # the client is waiting for the answer by now
            assert self.transport is not None
            self.transport.close()
            return
        channel.send_exit_status(0)
        channel.shutdown_write()
        channel.close()


@dataclass
class FakeBoard:
    port: int
    key: Path
    known_hosts: Path
    log: list[str]


@pytest.fixture
def board(tmp_path: Path) -> Iterator[FakeBoard]:
    client = tmp_path / "client" / "id_ed25519"
    ensure_client_key(client)
    host = tmp_path / "host" / "key"
    ensure_client_key(host)
    host_key = paramiko.PKey.from_path(host)
    client_key = paramiko.PKey.from_path(client)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    log: list[str] = []
    transports: list[paramiko.Transport] = []

    def serve() -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except OSError:
                return
            transport = paramiko.Transport(sock)
            transport.add_server_key(host_key)
            server = _Board(client_key, log)
            server.transport = transport
            transports.append(transport)
            try:
                transport.start_server(server=server)
            except (paramiko.SSHException, EOFError, OSError):
                transport.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield FakeBoard(listener.getsockname()[1], client, tmp_path / "known_hosts", log)
    finally:
        listener.close()
        for transport in transports:
            transport.close()


def test_link_cut_during_try_is_unreachable_from_the_api(board: FakeBoard, tmp_path: Path) -> None:
    make_release(tmp_path / "release")
    target = Target("b1", "127.0.0.1", board.port, "root", board.key, board.known_hosts, True, 5.0)
    result = machine.update(target, tmp_path / "release", machine.Options(trust=None))
    assert any(" try " in cmd for cmd in board.log), (board.log, result)
    assert result.outcome is Outcome.UNREACHABLE
    assert result.exit_code == 12
    assert "try" in result.reason and "\n" not in result.reason


def test_link_cut_during_try_is_unreachable_from_the_cli(board: FakeBoard, tmp_path: Path) -> None:
    make_release(tmp_path / "release")
    proc = subprocess.run(
        [
            FLEET,
            "update",
            f"root@127.0.0.1:{board.port}",
            tmp_path / "release",
            "--insecure-skip-host-checks",
            "--identity",
            board.key,
            "--known-hosts",
            board.known_hosts,
            "--trust-new-host",
            "--connect-timeout",
            "5",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 12, (proc.stdout, proc.stderr)
    lines = proc.stdout.strip().splitlines()
    assert lines and lines[0].startswith(f"root@127.0.0.1:{board.port}: unreachable: "), proc.stdout
    assert len(lines) == 1, proc.stdout
    assert "Traceback" not in proc.stderr and "error" not in proc.stderr, proc.stderr
