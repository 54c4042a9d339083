"""Provisioning settings are outside input: every value is checked before anything is
written, and each refusal names the value and what would be accepted."""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

import pytest

from fleet import provision
from fleet.errors import ConfigError, UsageError

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


# ---- WiFi settings (fleet.provision.wifi) -----------------------------------------------


def test_wifi_key_is_the_one_wpa_passphrase_derives() -> None:
    from fleet.provision.wifi import derive_psk

    # IEEE 802.11i-2004, annex H.4.1 test vector: passphrase "password", SSID "IEEE".
    assert derive_psk("password", b"IEEE").hex() == (
        "f42c6fc52df0ebef9ebb4b90b38a5f902e83fe1b135a70e23aed762e9710a12e"
    )


@pytest.mark.parametrize(
    "ssid, secret, country, message",
    [
        ("x" * 33, "passphrase", None, "a network name is 1 to 32 bytes, got 33"),
        ("", "passphrase", None, "a network name is 1 to 32 bytes, got 0"),
        ("net", "short", None, "8 to 63 printable ASCII characters"),
        ("net", "x" * 64, None, "8 to 63 printable ASCII characters"),
        ("net", "tab\there!", None, "8 to 63 printable ASCII characters"),
        ("net", "", None, "8 to 63 printable ASCII characters"),
        ("net", "passphrase", "gb", "two capital letters (ISO 3166), got 'gb'"),
        ("net", "passphrase", "GBR", "two capital letters (ISO 3166), got 'GBR'"),
    ],
)
def test_bad_wifi_values_are_refused_before_anything_is_written(
    tmp_path: Path, ssid: str, secret: str, country: str | None, message: str
) -> None:
    from fleet.provision.wifi import parse

    psk = tmp_path / "psk"
    psk.write_text(secret + "\n")
    with pytest.raises(UsageError, match=re.escape(message)):
        parse(ssid, psk, country)


def test_wifi_settings_from_options_and_settings_file(tmp_path: Path) -> None:
    from fleet.provision import Options, SettingsFile, from_options

    (tmp_path / "psk").write_text("a-long-passphrase\n")
    raw = "00" * 32
    (tmp_path / "raw").write_text(raw + "\n")
    settings = from_options(Options(hostname="k1", wifi_ssid="Workshop",
                                    wifi_psk_file=tmp_path / "psk", wifi_country="DE"))
    assert settings.wifi is not None
    text = settings.wifi.render()
    assert text.splitlines() == [
        f"ssid={b'Workshop'.hex()}",
        f"psk={hashlib.pbkdf2_hmac('sha1', b'a-long-passphrase', b'Workshop', 4096, 32).hex()}",
        "country=DE",
    ]
    assert "a-long-passphrase" not in text
    # A 64-hex-digit line is a key already derived.
    direct = from_options(Options(wifi_ssid="W", wifi_psk_file=tmp_path / "raw"))
    assert direct.wifi is not None and direct.wifi.psk.hex() == raw
    with pytest.raises(UsageError, match="need --wifi-ssid"):
        from_options(Options(hostname="k1", wifi_psk_file=tmp_path / "psk"))
    boards = tmp_path / "boards.toml"
    boards.write_text('[defaults]\nwifi_ssid = "Line 1"\nwifi_psk_file = "psk"\n'
                      'wifi_country = "GB"\n[[board]]\nhostname = "k2"\n')
    entry = SettingsFile.load(boards).find(hostname="k2")
    assert entry.wifi is not None and entry.wifi.ssid == b"Line 1"
    assert entry.wifi.country == "GB"
    boards.write_text('[[board]]\nhostname = "k3"\nwifi_psk_file = "psk"\n')
    with pytest.raises(ConfigError, match="wifi_ssid"):
        SettingsFile.load(boards)
