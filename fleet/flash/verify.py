"""Read back what was written, from the device itself and not from the page cache.

The device is opened with O_DIRECT and read into page-aligned buffers, so every byte
comes from the medium (or, for a loop device, from the layer below it). Where O_DIRECT
is refused, the device's cached pages are dropped first (fsync + POSIX_FADV_DONTNEED).

Ranges are independent, so two of them are checked at once (hashlib lets go of the GIL
on large buffers), and inside each range the next chunk is read while the current one
is hashed: O_DIRECT has no kernel readahead, so the reads in flight are our own. A
range written around the page cache can be read back as soon as its write returned,
while the next ones are being written (``DeviceChecker``).
"""

from __future__ import annotations

import hashlib
import os
import queue
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from fleet.errors import FlashError
from fleet.flash.writer import Expected, aligned_buffers, logical_block_size

CHUNK = 8 * 1024 * 1024
RANGES_AT_ONCE = 2


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


class _Reader:
    """Hashes ranges of one open device; each range borrows two buffers."""

    def __init__(
        self, fd: int, align: int, reads: ThreadPoolExecutor, progress: Callable[[int], None] | None
    ) -> None:
        self.fd = fd
        self.align = align
        self.reads = reads
        self.progress = progress
        self.stopped = False
        self.free: queue.SimpleQueue[list[memoryview]] = queue.SimpleQueue()
        for _ in range(RANGES_AT_ONCE):
            self.free.put(aligned_buffers(2, CHUNK))

    def check(self, item: Expected) -> Mismatch | None:
        if item.start % self.align:
            raise FlashError(f"range at byte {item.start} is not {self.align}-byte aligned")
        pair = self.free.get()
        try:
            actual = self._hash(item, pair)
        finally:
            self.free.put(pair)
        if actual == item.digest:
            return None
        return Mismatch(item.start, item.end, item.digest, actual)

    def _hash(self, item: Expected, pair: list[memoryview]) -> str:
        digest = hashlib.new(item.algorithm)
        reads = [(pos, min(CHUNK, item.end - pos)) for pos in range(item.start, item.end, CHUNK)]
        pending: Future[int] | None = None
        for index, (offset, length) in enumerate(reads):
            if self.stopped:
                break
            view = pair[index % 2]
            got = pending.result() if pending else self._read_at(view, offset, length)
            pending = None
            if index + 1 < len(reads):
                pending = self.reads.submit(self._read_at, pair[(index + 1) % 2], *reads[index + 1])
            useful = min(length, got)
            digest.update(view[:useful])
            if self.progress:
                self.progress(useful)
            if got < length:
                break  # device ends early: the hash will not match
        if pending is not None:
            pending.result()  # the buffer goes back to the pool only once it is idle
        return digest.hexdigest()

    def _read_at(self, view: memoryview, offset: int, length: int) -> int:
        # O_DIRECT lengths must be aligned too; the tail past ``length`` is ignored.
        aligned = -(-length // self.align) * self.align
        got = 0
        while got < length:
            n = os.preadv(self.fd, [view[got:aligned]], offset + got)
            if n == 0:
                break
            got += n
        return got


class DeviceChecker:
    """Reads ranges of a device back as they are handed in, two at a time, while the
    caller goes on (writing the next ones). ``direct`` says whether reads bypass the page
    cache; without it, only hand ranges in after the device was synced."""

    def __init__(self, device: Path, progress: Callable[[int], None] | None = None) -> None:
        self.device = device
        try:
            self.fd, self.direct = _open_uncached(device)
        except OSError as exc:
            raise FlashError(f"cannot open {device} to verify: {exc.strerror}") from exc
        self._reads = ThreadPoolExecutor(RANGES_AT_ONCE, thread_name_prefix="verify-read")
        self._hashes = ThreadPoolExecutor(RANGES_AT_ONCE, thread_name_prefix="verify-hash")
        align = logical_block_size(self.fd) if self.direct else 1
        self._reader = _Reader(self.fd, align, self._reads, progress)
        self._pending: list[Future[Mismatch | None]] = []
        # ranges to read only once the device was synced; results() submits them
        self.after_sync: list[Expected] = []

    def submit(self, item: Expected) -> None:
        self._pending.append(self._hashes.submit(self._reader.check, item))

    def results(self) -> list[Mismatch]:
        """Wait for every range handed in; return those that read back wrong, in order.
        Call it after the device was synced."""
        for item in self.after_sync:
            self.submit(item)
        self.after_sync = []
        found = [f.result() for f in self._pending]
        return sorted((bad for bad in found if bad is not None), key=lambda b: b.start)

    def close(self) -> None:
        for future in self._pending:
            future.cancel()
        self._reader.stopped = True  # a range being read gives up at its next chunk
        self._hashes.shutdown()
        self._reads.shutdown()
        os.close(self.fd)

    def __enter__(self) -> DeviceChecker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_device(
    device: Path, expected: Sequence[Expected], progress: Callable[[int], None] | None = None
) -> list[Mismatch]:
    """Hash each expected range as read from ``device``; return the ranges that differ."""
    with DeviceChecker(device, progress) as checker:
        for item in expected:
            checker.submit(item)
        return checker.results()


def verification_error(device: Path, bad: Sequence[Mismatch]) -> FlashError:
    first = bad[0]
    return FlashError(
        f"verification failed: {len(bad)} range(s) of {device} read back wrong, first "
        f"at bytes {first.start}-{first.end} (expected {first.expected[:16]}..., "
        f"read {first.actual[:16]}...); the device holds a corrupt image: flash it "
        "again or replace the card"
    )


def verify_device(
    device: Path, expected: Sequence[Expected], progress: Callable[[int], None] | None = None
) -> None:
    """Raise FlashError naming the first bad range when the device does not read back."""
    bad = check_device(device, expected, progress)
    if bad:
        raise verification_error(device, bad)
