"""Negotiating a read's options: blksize (RFC 2348), tsize (RFC 2349), timeout
(RFC 2349) and windowsize (RFC 7440). Unknown or malformed options are left out of the
OACK, as RFC 2347 lets a server do; values out of range are clamped or ignored."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_BLKSIZE = 512
MIN_BLKSIZE, MAX_BLKSIZE = 8, 65464
MAX_WINDOW = 64  # enough to fill a LAN; bounds what one client can have in flight
DEFAULT_TIMEOUT = 1.0


@dataclass(frozen=True)
class Negotiated:
    blksize: int = DEFAULT_BLKSIZE
    windowsize: int = 1
    timeout: float = DEFAULT_TIMEOUT
    accepted: tuple[tuple[str, int], ...] = ()  # what goes into the OACK, in order

    @property
    def oack(self) -> dict[str, int] | None:
        return dict(self.accepted) if self.accepted else None


def _int(value: str) -> int | None:
    return int(value) if value.isascii() and value.isdigit() and len(value) <= 6 else None


def negotiate(requested: dict[str, str], size: int, max_blksize: int = MAX_BLKSIZE) -> Negotiated:
    blksize, windowsize, timeout = DEFAULT_BLKSIZE, 1, DEFAULT_TIMEOUT
    accepted: list[tuple[str, int]] = []
    for name, raw in requested.items():
        value = _int(raw)
        if value is None:
            continue
        if name == "blksize" and value >= MIN_BLKSIZE:
            blksize = min(value, max_blksize)
            accepted.append((name, blksize))
        elif name == "tsize" and value == 0:  # a read asks for the size with 0
            accepted.append((name, size))
        elif name == "timeout" and 1 <= value <= 255:
            timeout = float(value)
            accepted.append((name, value))
        elif name == "windowsize" and value >= 1:
            windowsize = min(value, MAX_WINDOW)
            accepted.append((name, windowsize))
    return Negotiated(blksize, windowsize, timeout, tuple(accepted))
