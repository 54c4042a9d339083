"""Provisioning settings are outside input: every value is checked before anything is
written, and each refusal names the value and what would be accepted."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from fleet import provision
from fleet.errors import UsageError

pytestmark = pytest.mark.unit


def key_line(kind: str = "ssh-ed25519", comment: str = "me@desk") -> str:
    blob = len(kind).to_bytes(4, "big") + kind.encode() + (32).to_bytes(4, "big") + bytes(32)
    return f"{kind} {base64.b64encode(blob).decode()} {comment}"


@pytest.mark.parametrize("name", ["kiosk-01", "a", "board7.lab.example", "X" * 63])
def test_good_hostnames(name: str) -> None:
    assert provision.check_hostname(name) == name


@pytest.mark.parametrize(
    "name", ["", "-kiosk", "kiosk-", "kiosk_1", "a..b", "a b", "x" * 64, "k;reboot", "k\nx"]
)
def test_bad_hostnames(name: str) -> None:
    with pytest.raises(UsageError, match="not a valid hostname"):
        provision.check_hostname(name)


def test_key_lines_are_checked() -> None:
    good = key_line()
    text = f"# team keys\n\n{good}\nno-pty {key_line('ssh-rsa')}\n"
    assert provision.parse_authorized_keys(text, "k.pub") == (good, f"no-pty {key_line('ssh-rsa')}")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n", "private key"),
        ("hello world\n", r"k.pub:1: not an SSH public key"),
        ("ssh-ed25519 !!!notbase64 me\n", "base64"),
        (key_line("ssh-rsa").replace("ssh-rsa", "ssh-ed25519", 1) + "\n", "not a ssh-ed25519 key"),
        ("# only a comment\n", "no SSH public key"),
        (key_line() + "\x1b[2J\n", "control characters"),
    ],
)
def test_bad_key_files(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        provision.parse_authorized_keys(text, "k.pub")


def test_network_dhcp_and_static() -> None:
    assert provision.parse_network("dhcp").render() == "mode=dhcp\n"
    net = provision.parse_network("static:192.0.2.10/24,192.0.2.1,192.0.2.53")
    assert net.spec() == "static:192.0.2.10/24,192.0.2.1,192.0.2.53"
    assert net.render() == (
        "mode=static\naddress=192.0.2.10\nprefix=24\nnetmask=255.255.255.0\n"
        "gateway=192.0.2.1\ndns=192.0.2.53\n"
    )
    assert "gateway" not in provision.parse_network("static:192.0.2.10/30").render()


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("static", "expected dhcp or static"),
        ("dhcp6", "expected dhcp or static"),
        ("static:192.0.2.10,192.0.2.1", "needs its prefix length"),
        ("static:192.0.2.300/24,192.0.2.1", "bad address"),
        ("static:192.0.2.10/33", "bad address"),
        ("static:192.0.2.0/24,192.0.2.1", "not a host address"),
        ("static:192.0.2.10/24,198.51.100.1", "must be another address in 192.0.2.0/24"),
        ("static:192.0.2.10/24,192.0.2.10", "must be another address"),
        ("static:192.0.2.10/24,192.0.2.1,dns.example", "static:192.0.2.10/24"),
        ("static:2001:db8::1/64", "bad address"),
    ],
)
def test_bad_network_specs(spec: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        provision.parse_network(spec)


@pytest.mark.parametrize("dest", ["app.conf", "certs/ca.pem", "/data/app/config/x.toml"])
def test_good_config_destinations(dest: str) -> None:
    assert not provision.check_dest(dest, "t").is_absolute()


@pytest.mark.parametrize(
    "dest",
    ["../etc/passwd", "a/../../b", "/etc/passwd", "", "a//b", "./a", ".hidden", "a\\b", "a b",
     "/data/app/config/../x"],
)
def test_config_destinations_that_escape_are_refused(dest: str) -> None:
    with pytest.raises(UsageError, match="DEST"):
        provision.check_dest(dest, "--config-file")


def test_config_file_names_clash_without_case(tmp_path: Path) -> None:
    src = tmp_path / "a.conf"
    src.write_text("x=1\n")
    files = [provision.parse_config_file(f"{src}:App.conf"),
             provision.parse_config_file(f"{src}:app.CONF")]
    with pytest.raises(UsageError, match="both go to"):
        provision.check_files(files)
    nested = [provision.parse_config_file(f"{src}:x"), provision.parse_config_file(f"{src}:x/y")]
    with pytest.raises(UsageError, match="also a folder"):
        provision.check_files(nested)


def test_config_file_limits(tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(provision.MAX_FILE_BYTES + 1))
    with pytest.raises(UsageError, match="larger than"):
        provision.parse_config_file(f"{big}:big.bin")
    with pytest.raises(UsageError, match="is not a file"):
        provision.parse_config_file(f"{tmp_path}/missing:x")
    with pytest.raises(UsageError, match="expected SRC:DEST"):
        provision.parse_config_file("nodest")


def test_lab_key_comes_first_and_hostname_defaults(tmp_path: Path) -> None:
    mine = key_line(comment="ops")
    lab_key = key_line(comment="lab")
    merged = provision.with_defaults(provision.Settings(authorized_keys=(mine,)), "b1", [lab_key])
    assert merged.authorized_keys == (lab_key, mine)
    assert merged.hostname == "b1"
    named = provision.with_defaults(provision.Settings(hostname="kiosk"), "b1", [lab_key])
    assert named.hostname == "kiosk"
