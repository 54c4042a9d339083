"""Trust on first use when many processes meet new boards at once (a rollout's first
wave): per host exactly one key is pinned, every process is held to that key, an
impostor answering some of them is refused as CHANGED, and known_hosts is never torn.

The boards are real SSH servers on 127.0.0.1 (paramiko in threads); one of them hands a
different host key to successive connections, as an impostor racing the real board
would. The clients are separate fleet processes started together."""

from __future__ import annotations

import base64
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest

from fleet.lab.keys import ensure_client_key
from fleet.ssh import fingerprint, known_hosts_name

pytestmark = pytest.mark.integration

CLIENT = """
import sys, time
from pathlib import Path
from fleet.errors import RemoteError
from fleet.ssh import Session
port, key, known, go = int(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
while not go.exists():
    time.sleep(0.005)
try:
    with Session.connect("127.0.0.1", port, "root", key, known, trust_new=True) as s:
        print("ok", s.host_key_fingerprint())
except RemoteError as exc:
    print("refused", exc)
"""


class _Server(paramiko.ServerInterface):
    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        return paramiko.AUTH_SUCCESSFUL


def _serve(host_keys: list[paramiko.PKey], stop: list[socket.socket]) -> int:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(32)
    stop.append(listener)

    def loop() -> None:
        count = 0
        while True:
            try:
                sock, _ = listener.accept()
            except OSError:
                return
            transport = paramiko.Transport(sock)
            transport.add_server_key(host_keys[count % len(host_keys)])
            count += 1
            try:
                transport.start_server(server=_Server())
            except (paramiko.SSHException, EOFError, OSError):
                transport.close()

    threading.Thread(target=loop, daemon=True).start()
    return int(listener.getsockname()[1])


def _key(folder: Path) -> paramiko.PKey:
    ensure_client_key(folder / "key")
    return paramiko.PKey.from_path(folder / "key")


@pytest.fixture
def listeners() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    yield opened
    for listener in opened:
        listener.close()


def test_racing_first_contacts_pin_one_key_per_host(
    tmp_path: Path, listeners: list[socket.socket]
) -> None:
    honest = _key(tmp_path / "honest")
    impostors = [_key(tmp_path / f"impostor{i}") for i in range(2)]
    other = _key(tmp_path / "other")
    raced = _serve([honest, *impostors], listeners)  # a different key on each connection
    calm = _serve([other], listeners)
    client = tmp_path / "client" / "id_ed25519"
    ensure_client_key(client)
    known = tmp_path / "known_hosts"
    go = tmp_path / "go"
    ports = [raced] * 6 + [calm] * 4
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CLIENT, str(port), str(client), str(known), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for port in ports
    ]
    time.sleep(1.5)  # let every client import paramiko and wait at the line
    go.touch()
    answers = []
    for port, proc in zip(ports, procs, strict=True):
        stdout, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0, stderr
        answers.append((port, stdout.strip()))

    lines = known.read_text().splitlines()
    # Whole lines only, one per host, each a key OpenSSH's format can carry.
    names = [line.split()[0] for line in lines]
    assert sorted(names) == sorted(known_hosts_name("127.0.0.1", p) for p in (raced, calm))
    pinned = {}
    for line in lines:
        name, kind, blob = line.split(" ")
        key = paramiko.PKey.from_type_string(kind, base64.b64decode(blob))
        pinned[name] = fingerprint(key)
    assert pinned[known_hosts_name("127.0.0.1", calm)] == fingerprint(other)

    winner = pinned[known_hosts_name("127.0.0.1", raced)]
    for port, answer in answers:
        if answer.startswith("ok "):
            # Every process that got in talked to the key that stays pinned.
            assert answer == f"ok {pinned[known_hosts_name('127.0.0.1', port)]}", answers
        else:
            assert port == raced, answers
            assert answer.startswith("refused host key of") and "CHANGED" in answer, answers
            assert winner in answer, answers
    raced_answers = [a for p, a in answers if p == raced]
    assert any(a.startswith("refused") for a in raced_answers), answers
    assert sum(a.startswith("ok ") for p, a in answers if p == calm) == 4, answers
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
