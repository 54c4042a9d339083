"""known_hosts handling of fleet.ssh: pinning replaces, forgetting drops plain and hashed
entries of one host:port only, and OpenSSH's spelling of hosts on other ports."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import paramiko
import pytest

from fleet.errors import RemoteError
from fleet.lab.keys import ensure_client_key
from fleet.ssh import (
    fingerprint,
    forget_host,
    known_hosts_name,
    pin_host_key,
    pinned_keys,
    trust_on_first_use,
)

pytestmark = pytest.mark.unit


def _key(tmp_path: Path, name: str) -> paramiko.PKey:
    path = tmp_path / name / "key"
    ensure_client_key(path)
    return paramiko.PKey.from_path(path)


def test_known_hosts_name() -> None:
    assert known_hosts_name("10.0.0.5", 22) == "10.0.0.5"
    assert known_hosts_name("127.0.0.1", 2222) == "[127.0.0.1]:2222"


def test_pin_replaces_and_forget_drops_only_that_host(tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    first, second, other = _key(tmp_path, "a"), _key(tmp_path, "b"), _key(tmp_path, "c")
    hashed = paramiko.HostKeys.hash_host("[127.0.0.1]:2000")
    known.write_text(
        "# a comment stays\n"
        f"{hashed} ssh-ed25519 {first.get_base64()}\n"
        f"[127.0.0.1]:3000 ssh-ed25519 {other.get_base64()}\n"
    )
    pin_host_key(known, "127.0.0.1", 2000, second)
    assert [fingerprint(k) for k in pinned_keys(known, "127.0.0.1", 2000)] == [fingerprint(second)]
    assert known.stat().st_mode & 0o777 == 0o600

    forget_host(known, "127.0.0.1", 2000)
    assert pinned_keys(known, "127.0.0.1", 2000) == []
    assert [fingerprint(k) for k in pinned_keys(known, "127.0.0.1", 3000)] == [fingerprint(other)]
    assert known.read_text().startswith("# a comment stays\n")


def test_fingerprint_is_openssh_sha256_form(tmp_path: Path) -> None:
    text = fingerprint(_key(tmp_path, "a"))
    assert text.startswith("SHA256:") and len(text) == 7 + 43 and not text.endswith("=")


def test_missing_known_hosts_pins_nothing(tmp_path: Path) -> None:
    assert pinned_keys(tmp_path / "none", "127.0.0.1", 22) == []
    forget_host(tmp_path / "none", "127.0.0.1", 22)
    assert not (tmp_path / "none").exists()


def _first_contact(known: Path, port: int, key_path: Path, start: object, out: object) -> None:
    key = paramiko.PKey.from_path(key_path)
    start.wait()  # type: ignore[attr-defined]
    try:
        trust_on_first_use(known, "127.0.0.1", port, key)
        out.put((port, "pinned", fingerprint(key)))  # type: ignore[attr-defined]
    except RemoteError as exc:
        out.put((port, "refused", str(exc)))  # type: ignore[attr-defined]


def test_processes_pinning_at_once_pin_one_key_per_host(tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text("# kept\n")
    keys = [tmp_path / f"k{i}" / "key" for i in range(3)]
    for path in keys:
        ensure_client_key(path)
    # Ports 2000-2003 each get one key from four processes; port 2004 gets three keys.
    jobs = [(2000 + h, keys[h % 3]) for h in range(4) for _ in range(4)]
    jobs += [(2004, key) for key in keys for _ in range(2)]
    ctx = multiprocessing.get_context("fork")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_first_contact, args=(known, p, k, start, out)) for p, k in jobs]
    for proc in procs:
        proc.start()
    start.set()
    answers = [out.get(timeout=60) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0

    lines = known.read_text().splitlines()
    assert lines[0] == "# kept"
    assert sorted(line.split()[0] for line in lines[1:]) == [
        known_hosts_name("127.0.0.1", 2000 + h) for h in range(5)
    ]
    assert all(len(line.split()) == 3 for line in lines[1:])
    assert [a for a in answers if a[0] < 2004 and a[1] != "pinned"] == []
    winner = [fingerprint(k) for k in pinned_keys(known, "127.0.0.1", 2004)]
    assert len(winner) == 1
    for _port, kind, text in (a for a in answers if a[0] == 2004):
        if kind == "pinned":
            assert text == winner[0]
        else:
            assert "CHANGED" in text and winner[0] in text
    assert sum(a[1] == "refused" for a in answers) == 4  # two processes for each other key


def test_first_use_keeps_a_pinned_key_and_refuses_another(tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    first, second = _key(tmp_path, "a"), _key(tmp_path, "b")
    trust_on_first_use(known, "127.0.0.1", 2000, first)
    trust_on_first_use(known, "127.0.0.1", 2000, first)
    with pytest.raises(RemoteError) as info:
        trust_on_first_use(known, "127.0.0.1", 2000, second)
    assert "CHANGED" in str(info.value) and "\n" not in str(info.value)
    assert [fingerprint(k) for k in pinned_keys(known, "127.0.0.1", 2000)] == [fingerprint(first)]
    assert len(known.read_text().splitlines()) == 1
