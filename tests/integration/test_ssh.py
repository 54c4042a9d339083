"""fleet.ssh against a real Debian dropbear on loopback: host key pinning, key-only login,
exec results, streaming upload."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import paramiko
import pytest

from fleet.errors import RemoteError
from fleet.lab.keys import ensure_client_key
from fleet.lab.ports import free_loopback_port
from fleet.ssh import Session, fetch_host_key, fingerprint, pinned_keys

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("dropbear") is None, reason="dropbear-bin not installed"),
    pytest.mark.skipif(os.geteuid() != 0, reason="the dropbear fixture needs root (unshare)"),
]


@dataclass
class Server:
    port: int
    host_fingerprint: str
    key: Path
    known_hosts: Path


def _wait_banner(port: int, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(200):
        if proc.poll() is not None:
            raise RuntimeError(f"dropbear exited: {proc.stderr.read().decode()}")  # type: ignore[union-attr]
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                if sock.recv(64).startswith(b"SSH-2.0"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError("dropbear did not answer")


@pytest.fixture
def server(tmp_path: Path) -> Server:
    """dropbear on a free loopback port. It reads authorized_keys from the login user's
    home as /etc/passwd names it, so it runs in a private mount namespace where a copy of
    /etc/passwd gives root a temporary home holding the test's authorized_keys."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    home.chmod(0o700)
    key = tmp_path / "client" / "id_ed25519"
    (home / ".ssh" / "authorized_keys").write_text(ensure_client_key(key) + "\n")
    (home / ".ssh" / "authorized_keys").chmod(0o600)
    passwd = tmp_path / "passwd"
    lines = []
    for line in Path("/etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == "root":
            fields[5] = str(home)
            fields[6] = "/bin/sh"
        lines.append(":".join(fields))
    passwd.write_text("\n".join(lines) + "\n")
    host_key = tmp_path / "host_key"
    made = subprocess.run(
        ["dropbearkey", "-t", "ed25519", "-f", str(host_key)], capture_output=True, check=True
    )
    host_fp = next(w for w in made.stdout.decode().split() if w.startswith("SHA256:"))
    port = free_loopback_port()
    script = (
        'mount --bind "$1" /etc/passwd && exec dropbear -F -E -s -p "127.0.0.1:$2" -r "$3" -P "$4"'
    )
    proc = subprocess.Popen(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
            str(passwd),
            str(port),
            str(host_key),
            str(tmp_path / "dropbear.pid"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_banner(port, proc)
        yield Server(port, host_fp, key, tmp_path / "known_hosts")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _connect(server: Server, trust_new: bool = False, **kw: object) -> Session:
    return Session.connect(
        "127.0.0.1",
        server.port,
        "root",
        kw.get("key", server.key),  # type: ignore[arg-type]
        server.known_hosts,
        trust_new=trust_new,
        timeout=10,
    )


def test_unknown_host_key_is_refused_and_not_recorded(server: Server) -> None:
    with pytest.raises(RemoteError) as info:
        _connect(server)
    message = str(info.value)
    assert "unknown" in message and server.host_fingerprint in message
    assert "\n" not in message
    assert not server.known_hosts.exists()


def test_trust_new_records_the_key_then_pinned_key_connects(server: Server) -> None:
    with _connect(server, trust_new=True) as session:
        assert session.host_key_fingerprint() == server.host_fingerprint
    text = server.known_hosts.read_text()
    assert text.startswith(f"[127.0.0.1]:{server.port} ssh-ed25519 ")
    # OpenSSH reads the file we wrote and shows the same fingerprint dropbearkey printed.
    listed = subprocess.run(
        ["ssh-keygen", "-lf", str(server.known_hosts)], capture_output=True, check=True
    )
    assert server.host_fingerprint in listed.stdout.decode()
    with _connect(server) as session:
        assert session.exec("echo pinned") == (0, b"pinned\n", b"")


def test_changed_host_key_is_refused_showing_both_fingerprints(
    server: Server, tmp_path: Path
) -> None:
    ensure_client_key(tmp_path / "impostor" / "key")
    impostor = paramiko.PKey.from_path(tmp_path / "impostor" / "key")
    server.known_hosts.write_text(
        f"[127.0.0.1]:{server.port} ssh-ed25519 {impostor.get_base64()}\n"
    )
    with pytest.raises(RemoteError) as info:
        _connect(server, trust_new=True)
    message = str(info.value)
    assert "CHANGED" in message
    assert server.host_fingerprint in message and fingerprint(impostor) in message
    # trust_new never overwrites a pinned key
    assert [fingerprint(k) for k in pinned_keys(server.known_hosts, "127.0.0.1", server.port)] == [
        fingerprint(impostor)
    ]


def test_fetch_host_key_without_login(server: Server) -> None:
    key = fetch_host_key("127.0.0.1", server.port, timeout=10)
    assert fingerprint(key) == server.host_fingerprint


def test_exec_returns_exit_code_stdout_stderr_and_feeds_stdin(server: Server) -> None:
    with _connect(server, trust_new=True) as session:
        assert session.exec("echo out; echo err >&2; exit 3") == (3, b"out\n", b"err\n")
        assert session.exec("cat", input=b"abc\x00def") == (0, b"abc\x00def", b"")
        big = session.exec("head -c 3000000 /dev/zero; head -c 100000 /dev/zero >&2")
        assert (big.exit_code, len(big.stdout), len(big.stderr)) == (0, 3000000, 100000)


def test_exec_timeout_is_a_one_line_error(server: Server) -> None:
    with _connect(server, trust_new=True) as session, pytest.raises(RemoteError) as info:
        session.exec("sleep 30", timeout=0.5)
    assert "did not finish within 0.5 s" in str(info.value)


def test_upload_stream_arrives_intact(server: Server) -> None:
    data = os.urandom(4 * 1024 * 1024 + 123)
    seen: list[int] = []
    with _connect(server, trust_new=True) as session:
        result = session.upload_stream(
            "sha256sum; echo done >&2", io.BytesIO(data), len(data), progress=seen.append
        )
    assert result.exit_code == 0
    assert result.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()
    assert result.stderr == b"done\n"
    assert seen[-1] == len(data) and seen == sorted(seen)


def test_a_connection_lost_after_the_last_byte_is_a_remote_error(server: Server) -> None:
    """A board that loses power just as the last byte went out: the end of input is a
    packet too, and its failure must be fleet's RemoteError (the update's "lost the
    board"), not paramiko's EOFError escaping past it."""
    data = b"x" * 100_000
    with _connect(server, trust_new=True) as session:

        def cut(sent: int) -> None:
            if sent == len(data):
                session._transport.sock.close()  # the wire goes dead under paramiko

        # Which step meets the dead wire first (the EOF, or waiting for the exit status)
        # depends on timing; either way it is fleet's error, naming the command.
        with pytest.raises(RemoteError, match=r"'cat >/dev/null' on 127\.0\.0\.1"):
            session.upload_stream("cat >/dev/null", io.BytesIO(data), len(data), progress=cut)


def test_upload_stream_refuses_a_short_source(server: Server) -> None:
    with _connect(server, trust_new=True) as session, pytest.raises(Exception) as info:
        session.upload_stream("cat >/dev/null", io.BytesIO(b"x" * 10), 20)
    assert "ended after 10 of 20 bytes" in str(info.value)


def test_wrong_client_key_is_refused(server: Server, tmp_path: Path) -> None:
    other = tmp_path / "other" / "id_ed25519"
    ensure_client_key(other)
    with pytest.raises(RemoteError) as info:
        Session.connect("127.0.0.1", server.port, "root", other, server.known_hosts, trust_new=True)
    assert f"refused key {other}" in str(info.value)


def test_nothing_listening_is_a_clear_error(tmp_path: Path) -> None:
    port = free_loopback_port()
    with pytest.raises(RemoteError) as info:
        Session.connect("127.0.0.1", port, "root", tmp_path / "k", tmp_path / "kh", timeout=2)
    assert "not found" in str(info.value)  # the key is checked before the network
    ensure_client_key(tmp_path / "k")
    with pytest.raises(RemoteError) as info:
        Session.connect("127.0.0.1", port, "root", tmp_path / "k", tmp_path / "kh", timeout=2)
    assert f"cannot connect to 127.0.0.1:{port}" in str(info.value)
