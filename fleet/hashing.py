"""The one file hasher: payloads, cached .debs and the image report's files are all
hashed here, so one reading loop decides how fast fleet hashes.

One reused 1 MiB buffer read with ``readinto``: no new bytes object per block, and
hashlib (OpenSSL, which releases the GIL) runs at memory speed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

CHUNK = 1 << 20
Progress = Callable[[int], None]  # bytes read since the last call


class Hasher(Protocol):
    def update(self, data: memoryview, /) -> None: ...


def hash_file(
    path: Path, progress: Progress | None = None, also: Sequence[Hasher] = ()
) -> tuple[int, str]:
    """Size and SHA-256 (hex) of ``path``, read once. ``also`` get the same bytes (the
    SPDX report wants SHA-1 beside SHA-256). OSError passes to the caller, which knows
    what the file is and words the message."""
    digest = hashlib.sha256()
    size = 0
    view = memoryview(bytearray(CHUNK))
    with path.open("rb", buffering=0) as handle:
        while count := handle.readinto(view):
            block = view[:count]
            digest.update(block)
            for other in also:
                other.update(block)
            size += count
            if progress is not None:
                progress(count)
    return size, digest.hexdigest()


def sha256_file(path: Path) -> str:
    """SHA-256 (hex) of ``path``."""
    return hash_file(path)[1]
