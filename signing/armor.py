"""signify's file envelope: one ``untrusted comment:`` line, then one line of base64.

The comment is not covered by any signature, so it is only ever shown, never trusted.
The reader is strict (exactly two lines, canonical base64) so that a file has one
reading and a flipped bit cannot hide in slack such as padding bits or extra lines.
"""

from __future__ import annotations

import base64
import binascii

from signing.errors import SigningError

COMMENT_HEADER = "untrusted comment: "
# signify refuses longer comments; keeping its limit keeps every file signify-readable.
COMMENT_MAX = 1024


def armor(comment: str, blob: bytes) -> bytes:
    """Wrap ``blob`` with ``comment`` in signify's two-line form."""
    if len(comment) >= COMMENT_MAX or not _printable(comment):
        raise ValueError("comment must be one line of printable ASCII shorter than 1024")
    return f"{COMMENT_HEADER}{comment}\n{base64.b64encode(blob).decode()}\n".encode()


def unarmor(data: bytes, length: int, what: str, error: type[SigningError]) -> tuple[str, bytes]:
    """Return (comment, blob) from signify's form; ``blob`` must be ``length`` bytes long."""
    if len(data) > COMMENT_MAX + 2 * length + 64:
        raise error(f"{what} is too large ({len(data)} bytes)")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as exc:
        raise error(f"{what} is not ASCII") from exc
    lines = text.split("\n")
    if len(lines) != 3 or lines[2] != "":
        raise error(f"{what} must be exactly two lines ending with a newline")
    head, body = lines[0], lines[1]
    if not head.startswith(COMMENT_HEADER):
        raise error(f"{what} does not start with {COMMENT_HEADER.strip()!r}")
    comment = head[len(COMMENT_HEADER) :]
    if not _printable(comment) or len(comment) >= COMMENT_MAX:
        raise error(f"{what} has an unreadable comment line")
    try:
        blob = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise error(f"{what} is not valid base64") from exc
    if base64.b64encode(blob).decode() != body:
        raise error(f"{what} is not canonical base64")
    if len(blob) != length:
        raise error(f"{what} holds {len(blob)} bytes, expected {length}")
    return comment, blob


def _printable(text: str) -> bool:
    return all(" " <= ch <= "~" or ch == "\t" for ch in text)
