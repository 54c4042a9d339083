"""Client-side phasing: which boards a published percentage takes. The board computes the
same number in its pull script (fleet/device/pull), so the host can say in advance which
boards a wave holds, and a board's place does not depend on any server."""

from __future__ import annotations

import hashlib

BUCKETS = 100


def bucket(board: str, release: int) -> int:
    """0..99: the first 32 bits of SHA-256("BOARD:RELEASE"), modulo 100. A new release
    reshuffles the order, so the same boards are not always the canaries."""
    digest = hashlib.sha256(f"{board}:{release}".encode()).hexdigest()
    return int(digest[:8], 16) % BUCKETS


def in_wave(board: str, release: int, percent: int) -> bool:
    return bucket(board, release) < percent
