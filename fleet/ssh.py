"""SSH sessions to boards (paramiko): key-based auth only, host keys pinned in a
known_hosts file, a deadline on every operation, and errors as one-line RemoteErrors.

Host key rules, the same as OpenSSH's ``StrictHostKeyChecking=yes`` with an explicit
trust-on-first-use switch: a host with no pinned key is refused unless the caller asks to
trust it (then its key is recorded); a host whose key differs from the pinned one is
always refused, and the message shows both fingerprints so a user can tell a re-flashed
board from an impostor.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import select
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, NamedTuple

import paramiko

from fleet import atomic
from fleet.errors import FleetError, HostKeyError, RemoteError

CHUNK = 64 * 1024
Progress = Callable[[int], None]


class ExecResult(NamedTuple):
    exit_code: int
    stdout: bytes
    stderr: bytes


def known_hosts_name(host: str, port: int) -> str:
    """The host as known_hosts spells it: bare for port 22, ``[host]:port`` otherwise."""
    return host if port == 22 else f"[{host}]:{port}"


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's ``SHA256:...`` fingerprint, as ``ssh-keygen -lf`` prints it."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def pinned_keys(known_hosts: Path, host: str, port: int) -> list[paramiko.PKey]:
    if not known_hosts.exists():
        return []
    try:
        keys = paramiko.HostKeys(str(known_hosts))
    except (OSError, paramiko.SSHException) as exc:
        raise RemoteError(f"cannot read known_hosts {known_hosts}: {exc}") from exc
    entry = keys.lookup(known_hosts_name(host, port))
    return list(entry.values()) if entry else []


@contextlib.contextmanager
def _locked(known_hosts: Path) -> Iterator[None]:
    # Many sessions may trust new boards at once during a rollout; the lock keeps their
    # read-modify-write of one known_hosts file from losing each other's lines.
    known_hosts.parent.mkdir(parents=True, exist_ok=True)
    lock_path = known_hosts.with_name(known_hosts.name + ".lock")
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _read_lines(known_hosts: Path) -> list[str]:
    try:
        return known_hosts.read_text().splitlines()
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as exc:
        raise RemoteError(f"cannot read known_hosts {known_hosts}: {exc}") from exc


def _write_lines(known_hosts: Path, lines: list[str]) -> None:
    # Readers never take the lock: a rename shows them the old file or the new one whole.
    atomic.write_text(known_hosts, "".join(line + "\n" for line in lines), mode=0o600)


def _key_line(name: str, key: paramiko.PKey) -> str:
    return f"{name} {key.get_name()} {key.get_base64()}"


def _rewrite(known_hosts: Path, host: str, port: int, key: paramiko.PKey | None) -> None:
    name = known_hosts_name(host, port)
    with _locked(known_hosts):
        kept = [line for line in _read_lines(known_hosts) if not _names_host(line, name)]
        if key is not None:
            kept.append(_key_line(name, key))
        _write_lines(known_hosts, kept)


def _names_host(line: str, name: str) -> bool:
    fields = line.split()
    if not fields or fields[0].startswith("#"):
        return False
    return any(
        paramiko.HostKeys.hash_host(name, host) == host if host.startswith("|1|") else host == name
        for host in fields[0].split(",")
    )


def pin_host_key(known_hosts: Path, host: str, port: int, key: paramiko.PKey) -> None:
    """Record ``key`` as the only key of host:port (replacing any earlier one)."""
    _rewrite(known_hosts, host, port, key)


def trust_on_first_use(known_hosts: Path, host: str, port: int, key: paramiko.PKey) -> None:
    """Pin ``key`` for host:port unless a key is pinned already; then it must be this one.

    The check and the pin are one critical section: of several processes meeting a new
    host at once, the first pins and the others are held to its key, so an impostor
    answering one of them is refused rather than replacing the real key (or being
    replaced by it)."""
    with _locked(known_hosts):
        known = pinned_keys(known_hosts, host, port)
        _check_host_key(key, known, _where(host, port), known_hosts, trust_new=True)
        if not known:
            lines = _read_lines(known_hosts)
            _write_lines(known_hosts, [*lines, _key_line(known_hosts_name(host, port), key)])


def forget_host(known_hosts: Path, host: str, port: int) -> None:
    """Drop every pinned key of host:port (a board was re-flashed and has a new identity)."""
    if known_hosts.exists():
        _rewrite(known_hosts, host, port, None)


def _where(host: str, port: int) -> str:
    return f"{host}:{port}"


def _open_transport(
    host: str, port: int, timeout: float, key_types: list[str], banner_timeout: float | None = None
) -> paramiko.Transport:
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise RemoteError(f"cannot connect to {_where(host, port)}: {exc.strerror or exc}") from exc
    transport = paramiko.Transport(sock)
    # A forwarded port (the virtual lab's) accepts while the board is still rebooting and
    # then sends nothing: a caller polling for the board's return waits for the banner
    # less long than for the rest of the handshake.
    transport.banner_timeout = banner_timeout or timeout
    transport.handshake_timeout = timeout
    transport.auth_timeout = timeout
    if key_types:
        # Negotiate the key type that is pinned, so a server offering several host keys
        # is compared against the one we know rather than refused as "changed".
        options = transport.get_security_options()
        supported = [t for t in options.key_types if t in key_types or _base_type(t) in key_types]
        if supported:
            options.key_types = supported
    try:
        transport.start_client(timeout=timeout)
    except (paramiko.SSHException, OSError, EOFError) as exc:
        transport.close()
        raise RemoteError(
            f"SSH handshake with {_where(host, port)} failed: {_one_line(exc)}"
        ) from exc
    return transport


def _base_type(key_type: str) -> str:
    # rsa-sha2-256/512 are signature algorithms of an ssh-rsa key.
    return "ssh-rsa" if key_type.startswith("rsa-sha2-") else key_type


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def fetch_host_key(host: str, port: int, timeout: float = 10.0) -> paramiko.PKey:
    """The host key a server presents, without authenticating (for trust on first use)."""
    transport = _open_transport(host, port, timeout, [])
    try:
        key = transport.get_remote_server_key()
    finally:
        transport.close()
    return key


class Session:
    """One authenticated SSH connection. Use ``Session.connect(...)`` and close it (or use
    it as a context manager)."""

    def __init__(self, transport: paramiko.Transport, host: str, port: int, user: str) -> None:
        self._transport = transport
        self.host = host
        self.port = port
        self.user = user

    @classmethod
    def connect(
        cls,
        host: str,
        port: int,
        user: str,
        key_path: Path,
        known_hosts_path: Path,
        trust_new: bool = False,
        timeout: float = 10.0,
        banner_timeout: float | None = None,
    ) -> Session:
        pkey = _load_key(key_path)
        known = pinned_keys(known_hosts_path, host, port)
        where = _where(host, port)
        transport = _open_transport(
            host, port, timeout, [k.get_name() for k in known], banner_timeout
        )
        try:
            try:
                key = transport.get_remote_server_key()
            except paramiko.SSHException as exc:
                # A board that reboots mid-handshake leaves a transport with no session.
                raise RemoteError(f"SSH handshake with {where} failed: {_one_line(exc)}") from exc
            _check_host_key(key, known, where, known_hosts_path, trust_new)
            try:
                transport.auth_publickey(user, pkey)
            except paramiko.AuthenticationException as exc:
                raise RemoteError(
                    f"{where} refused key {key_path} for user {user}: {_one_line(exc)}"
                ) from exc
            except (paramiko.SSHException, OSError, EOFError) as exc:
                raise RemoteError(f"SSH login to {where} failed: {_one_line(exc)}") from exc
            if not known:
                trust_on_first_use(known_hosts_path, host, port, key)
        except BaseException:
            transport.close()
            raise
        return cls(transport, host, port, user)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._transport.close()

    def host_key_fingerprint(self) -> str:
        return fingerprint(self._transport.get_remote_server_key())

    def exec(self, cmd: str, input: bytes | None = None, timeout: float = 60.0) -> ExecResult:
        """Run ``cmd`` on the board; feed ``input`` to its stdin; wait at most ``timeout``
        seconds for it to finish. A non-zero exit is a result, not an error."""
        deadline = time.monotonic() + timeout
        channel = self._open(cmd, timeout)
        try:
            if input:
                self._send_all(channel, cmd, input, deadline)
            self._end_input(channel, cmd)
            return self._collect(channel, cmd, deadline, timeout)
        finally:
            _close(channel)

    def upload_stream(
        self,
        cmd: str,
        source: IO[bytes],
        size: int,
        progress: Progress | None = None,
        timeout: float = 60.0,
    ) -> ExecResult:
        """Stream exactly ``size`` bytes from ``source`` into ``cmd``'s stdin.

        ``timeout`` bounds each stall (no byte moving for that long) and the wait for
        ``cmd`` to finish after the last byte, not the whole transfer, whose length
        depends on ``size``. ``progress`` gets the number of bytes sent so far.
        """
        channel = self._open(cmd, timeout)
        out = bytearray()
        err = bytearray()
        sent = 0
        try:
            while sent < size:
                chunk = source.read(min(CHUNK, size - sent))
                if not chunk:
                    raise FleetError(f"upload source ended after {sent} of {size} bytes")
                self._send_all(channel, cmd, chunk, time.monotonic() + timeout)
                sent += len(chunk)
                _drain(channel, out, err)
                if progress is not None:
                    progress(sent)
            self._end_input(channel, cmd)
            result = self._collect(channel, cmd, time.monotonic() + timeout, timeout)
        finally:
            _close(channel)
        return ExecResult(result.exit_code, bytes(out) + result.stdout, bytes(err) + result.stderr)

    def _open(self, cmd: str, timeout: float) -> paramiko.Channel:
        where = _where(self.host, self.port)
        try:
            channel = self._transport.open_session(timeout=timeout)
            channel.settimeout(timeout)
            channel.exec_command(cmd)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise RemoteError(f"cannot run {cmd!r} on {where}: {_one_line(exc)}") from exc
        return channel

    def _end_input(self, channel: paramiko.Channel, cmd: str) -> None:
        # The EOF is a packet too: on a connection the board just dropped (a power cut
        # right after the last byte) paramiko raises EOFError from here.
        try:
            channel.shutdown_write()
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise RemoteError(
                f"ending the input of {cmd!r} on {self._where()} failed: {_one_line(exc)}"
            ) from exc

    def _send_all(self, channel: paramiko.Channel, cmd: str, data: bytes, deadline: float) -> None:
        view = memoryview(data)
        while view:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RemoteError(f"{cmd!r} on {self._where()} stopped reading its input")
            channel.settimeout(left)
            try:
                count = channel.send(bytes(view[:CHUNK]))
            except TimeoutError as exc:
                raise RemoteError(f"{cmd!r} on {self._where()} stopped reading its input") from exc
            except (paramiko.SSHException, OSError, EOFError) as exc:
                raise RemoteError(
                    f"sending to {cmd!r} on {self._where()} failed: {_one_line(exc)}"
                ) from exc
            if count == 0:
                raise RemoteError(f"{cmd!r} on {self._where()} closed its input early")
            view = view[count:]

    def _collect(
        self, channel: paramiko.Channel, cmd: str, deadline: float, timeout: float
    ) -> ExecResult:
        out = bytearray()
        err = bytearray()
        late = f"{cmd!r} on {self._where()} did not finish within {timeout} s"
        # The channel's fileno becomes readable on stdout data, stderr data, EOF and close.
        while not (channel.eof_received or channel.closed):
            left = deadline - time.monotonic()
            if left <= 0:
                raise RemoteError(late)
            select.select([channel], [], [], left)
            _drain(channel, out, err)
        _drain(channel, out, err)
        if not channel.status_event.wait(max(0.0, deadline - time.monotonic())):
            raise RemoteError(late)
        status = channel.recv_exit_status()
        if status == -1:
            raise RemoteError(f"{cmd!r} on {self._where()} ended without an exit status")
        return ExecResult(status, bytes(out), bytes(err))

    def _where(self) -> str:
        return _where(self.host, self.port)


def _close(channel: paramiko.Channel) -> None:
    """Close ``channel``; on a connection that has just died (a board losing power in
    the middle of a stream) there is nothing left to close, and paramiko's attempt to
    send the close raises EOFError or OSError, which must not replace the RemoteError
    that says what happened."""
    with contextlib.suppress(paramiko.SSHException, OSError, EOFError):
        channel.close()


def _drain(channel: paramiko.Channel, out: bytearray, err: bytearray) -> None:
    while channel.recv_ready():
        out += channel.recv(CHUNK)
    while channel.recv_stderr_ready():
        err += channel.recv_stderr(CHUNK)


def _load_key(key_path: Path) -> paramiko.PKey:
    try:
        return paramiko.PKey.from_path(key_path)
    except FileNotFoundError as exc:
        raise RemoteError(f"SSH key {key_path} not found") from exc
    except (paramiko.SSHException, OSError, ValueError) as exc:
        raise RemoteError(f"cannot load SSH key {key_path}: {_one_line(exc)}") from exc


def _check_host_key(
    key: paramiko.PKey,
    known: list[paramiko.PKey],
    where: str,
    known_hosts: Path,
    trust_new: bool,
) -> None:
    if any(k.get_name() == key.get_name() and k.asbytes() == key.asbytes() for k in known):
        return
    if known:
        pinned = ", ".join(f"{k.get_name()} {fingerprint(k)}" for k in known)
        raise HostKeyError(
            f"host key of {where} CHANGED: it presents {key.get_name()} {fingerprint(key)} "
            f"but {known_hosts} pins {pinned}; if the board was re-flashed, remove its line "
            f"from {known_hosts}, otherwise someone may be impersonating it"
        )
    if not trust_new:
        raise HostKeyError(
            f"host key of {where} is unknown ({key.get_name()} {fingerprint(key)}) and not in "
            f"{known_hosts}; refusing to connect (trust it on first use to record it)"
        )
