"""known_hosts handling of fleet.ssh: pinning replaces, forgetting drops plain and hashed
entries of one host:port only, and OpenSSH's spelling of hosts on other ports."""

from __future__ import annotations

from pathlib import Path

import paramiko
import pytest

from fleet.lab.keys import ensure_client_key
from fleet.ssh import fingerprint, forget_host, known_hosts_name, pin_host_key, pinned_keys

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
