"""The host key a board announces on its console: parsed strictly, since the lab pins it
(fleet.lab.hostkey)."""

from __future__ import annotations

import base64
from pathlib import Path

import paramiko
import pytest

from fleet.errors import LabError
from fleet.lab import hostkey

pytestmark = pytest.mark.unit

BLOB = b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + bytes(range(32))
LINE = b"fleet: host key ssh-ed25519 " + base64.b64encode(BLOB) + b"\r\n"


def test_the_first_announced_key_of_the_log_is_taken() -> None:
    other = b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + bytes(32)
    second = b"fleet: host key ssh-ed25519 " + base64.b64encode(other) + b"\n"
    console = b"U-Boot 2023.01\r\nfleet: [1.2] boot: init\r\n" + LINE + second
    assert hostkey.announced(console) == ("ssh-ed25519", BLOB)
    # What paramiko makes of it is the key a session is then held to.
    key = paramiko.PKey.from_type_string(*hostkey.announced(console))
    assert key.get_name() == "ssh-ed25519" and key.asbytes() == BLOB


def test_no_line_is_no_key() -> None:
    assert hostkey.announced(b"fleet: system up: slot A\n") is None


@pytest.mark.parametrize(
    "line",
    [
        b"fleet: host key ssh-rsa " + base64.b64encode(BLOB) + b"\n",  # not Ed25519
        b"fleet: host key ssh-ed25519 " + base64.b64encode(BLOB)[:-4] + b"\n",  # truncated
        b"fleet: host key ssh-ed25519 " + base64.b64encode(BLOB) + b"AAAA\n",  # too long
        b"fleet: host key ssh-ed25519 " + base64.b64encode(b"x" * 51) + b"\n",  # not a key blob
        b"fleet: host key ssh-ed25519 " + b"!" * 68 + b"\n",  # not base64
        b"fleet: host key \n",
    ],
    ids=["rsa", "truncated", "too-long", "not-a-key", "not-base64", "empty"],
)
def test_a_malformed_announcement_is_an_error(line: bytes) -> None:
    with pytest.raises(LabError, match="announced"):
        hostkey.announced(b"boot\n" + line)


def test_only_the_log_after_the_offset_counts(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    log.write_bytes(LINE + b"fleet: reboot\n")
    assert hostkey.from_console_log(log, 0) == ("ssh-ed25519", BLOB)
    assert hostkey.from_console_log(log, len(LINE)) is None
    assert hostkey.from_console_log(tmp_path / "missing.log", 0) is None
