"""Read back what was written, from the device itself and not from the page cache.

The device is opened with O_DIRECT and read into page-aligned buffers, so every byte
comes from the medium (or, for a loop device, from the layer below it). Where O_DIRECT
is refused, the device's cached pages are dropped first (fsync + POSIX_FADV_DONTNEED).
"""

from __future__ import annotations

import hashlib
import mmap
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from fleet.errors import FlashError
from fleet.flash.writer import Expected

CHUNK = 8 * 1024 * 1024
# O_DIRECT offsets and lengths must be multiples of the logical sector (512 on SD cards,
# USB sticks and loop devices); the buffers are page aligned.
ALIGN = 512


@dataclass(frozen=True)
class Mismatch:
    start: int
    end: int
    expected: str
    actual: str


def _open_uncached(device: Path) -> tuple[int, bool]:
    try:
        return os.open(device, os.O_RDONLY | os.O_DIRECT), True
    except OSError:
        fd = os.open(device, os.O_RDONLY)
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return fd, False


def check_device(
    device: Path, expected: Sequence[Expected], progress: Callable[[int], None] | None = None
) -> list[Mismatch]:
    """Hash each expected range as read from ``device``; return the ranges that differ."""
    try:
        fd, _direct = _open_uncached(device)
    except OSError as exc:
        raise FlashError(f"cannot open {device} to verify: {exc.strerror}") from exc
    # mmap memory is page aligned, as O_DIRECT wants; two buffers let one be read
    # while the other is hashed.
    buffers = [mmap.mmap(-1, CHUNK) for _ in range(2)]
    views = [memoryview(b) for b in buffers]
    bad: list[Mismatch] = []
    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="flash-verify") as pool:
            for item in expected:
                digest = hashlib.new(item.algorithm)
                reads = _range_reads(item.start, item.end)
                turn = 0
                pending = pool.submit(_read_at, fd, views[turn], *reads[0]) if reads else None
                for index, (_offset, length) in enumerate(reads):
                    assert pending is not None
                    got = pending.result()
                    view = views[turn]
                    turn ^= 1
                    if index + 1 < len(reads):
                        pending = pool.submit(_read_at, fd, views[turn], *reads[index + 1])
                    useful = min(length, got)
                    digest.update(view[:useful])
                    if progress:
                        progress(useful)
                    if got < length:
                        break  # device ends early: the hash will not match
                actual = digest.hexdigest()
                if actual != item.digest:
                    bad.append(Mismatch(item.start, item.end, item.digest, actual))
    finally:
        os.close(fd)
        for v in views:
            v.release()
        for b in buffers:
            b.close()
    return bad


def _range_reads(start: int, end: int) -> list[tuple[int, int]]:
    """(offset, useful length) per read; reads start on an aligned offset."""
    if start % ALIGN:
        raise FlashError(f"range at byte {start} is not {ALIGN}-byte aligned")
    return [(pos, min(CHUNK, end - pos)) for pos in range(start, end, CHUNK)]


def _read_at(fd: int, view: memoryview, offset: int, length: int) -> int:
    # O_DIRECT lengths must be aligned too; the tail past ``length`` is ignored.
    aligned = -(-length // ALIGN) * ALIGN
    got = 0
    while got < length:
        n = os.preadv(fd, [view[got:aligned]], offset + got)
        if n == 0:
            break
        got += n
    return got


def verify_device(
    device: Path, expected: Sequence[Expected], progress: Callable[[int], None] | None = None
) -> None:
    """Raise FlashError naming the first bad range when the device does not read back."""
    bad = check_device(device, expected, progress)
    if bad:
        first = bad[0]
        raise FlashError(
            f"verification failed: {len(bad)} range(s) of {device} read back wrong, first "
            f"at bytes {first.start}-{first.end} (expected {first.expected[:16]}..., "
            f"read {first.actual[:16]}...); the device holds a corrupt image: flash it "
            "again or replace the card"
        )
