"""The SSH host key a board announces on its serial console.

Each boot, rc.sysinit prints ``fleet: host key ssh-ed25519 BASE64``. Whoever holds the
board's serial line (the virtual lab's console log, a HIL rig's serial port) can pin that
key without trusting a first SSH handshake on the network, and without the handshake's
cost on an emulated CPU (about half a second of every `fleet lab up`)."""

from __future__ import annotations

import base64
import binascii
import re
from pathlib import Path

from fleet.errors import LabError

MARKER = b"fleet: host key "
# ssh-ed25519 blob: string "ssh-ed25519" (4 + 11 bytes) + string key (4 + 32): 51 bytes,
# 68 base64 characters.
_LINE = re.compile(rb"fleet: host key (ssh-ed25519) ([A-Za-z0-9+/]{68})(?=\s)")
_BLOB_PREFIX = b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20"


def announced(console: bytes) -> tuple[str, bytes] | None:
    """The (type, blob) of the first host key line in ``console``, or None if there is
    none. A line that names a key but does not hold a well-formed Ed25519 one is an
    error: it is the board's own word about its identity, and it is wrong."""
    at = console.find(MARKER)
    if at < 0:
        return None
    found = _LINE.match(console, at)
    if found is None:
        end = console.find(b"\n", at)
        shown = console[at : end if end >= 0 else at + 120].decode(errors="replace").strip()
        raise LabError(f"the board announced a malformed host key: {shown[:120]!r}")
    try:
        blob = base64.b64decode(found.group(2), validate=True)
    except binascii.Error:
        raise LabError("the board announced a host key that is not base64") from None
    if not blob.startswith(_BLOB_PREFIX) or len(blob) != len(_BLOB_PREFIX) + 32:
        raise LabError("the board announced a host key that is not an Ed25519 key")
    return found.group(1).decode(), blob


def from_console_log(path: Path, offset: int) -> tuple[str, bytes] | None:
    """The host key announced in the console log after ``offset`` (this boot's part)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            data = handle.read()
    except FileNotFoundError:
        return None
    return announced(data)
