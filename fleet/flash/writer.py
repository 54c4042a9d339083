"""Write an image onto an open block device: only the bmap's ranges when there is a
bmap, every byte otherwise.

Three things overlap so that a two-core machine keeps the source, the CPU and the
device busy at once: a helper thread reads (and decompresses) the next chunks, another
hashes the current one, and this thread writes it. Writes go around the page cache
(O_DIRECT, from page-aligned buffers) where the device allows: the image then does not
pass through memory twice, the final fsync has little left to flush, and the read-back
that follows cannot be served from cached pages.

The image's bytes are hashed while they are written only when that hash is needed: to
check a range against the bmap when there will be no read-back (``--no-verify``), or to
know what to read back when there is no bmap with checksums. When the read-back is
checked against the bmap itself, hashing the image too would only repeat the work; a
failed read-back is then traced to the image or the device by ``image_digests``.
The writer keeps count of what it has done, so that an error or Ctrl-C can say what
state the device is left in.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import mmap
import os
import struct
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from fleet.bmap import Bmap
from fleet.errors import FlashError
from fleet.flash.source import ImageSource, read_fully

CHUNK = 8 * 1024 * 1024
# Without a bmap the image is checked in segments, so a bad read-back names a place.
SEGMENT = 64 * 1024 * 1024
# Chunks read ahead of the one being written; each one in flight holds a buffer.
READ_AHEAD = 2
# How far beyond the range being read the kernel is asked to read a raw image ahead.
ADVISE_AHEAD = 64 * 1024 * 1024
_BLKSSZGET = 0x1268  # ioctl: the device's logical sector size

Progress = Callable[[int], None]
# Called as each checked range is complete: (its expectation, whether all of it went
# around the page cache, so that it can be read back before the final fsync).
RangeDone = Callable[["Expected", bool], None]


@dataclass(frozen=True)
class Expected:
    """What one byte range of the device must hash to."""

    start: int
    end: int
    algorithm: str
    digest: str


def expectations(bmap: Bmap) -> list[Expected]:
    """The bmap's own checksums as read-back expectations (format 1.3 and later)."""
    if bmap.checksum_type is None:
        raise FlashError("this bmap (format 1.2) has no checksums to verify against")
    found = []
    for r in bmap.ranges:
        start, end = bmap.span(r)
        assert r.checksum is not None
        found.append(Expected(start, end, bmap.checksum_type, r.checksum))
    return found


def logical_block_size(fd: int) -> int:
    """The unit O_DIRECT offsets and lengths must be multiples of (512 when unknown)."""
    try:
        raw = fcntl.ioctl(fd, _BLKSSZGET, b"\0" * 4)
    except OSError:
        return 512
    size: int = struct.unpack("i", raw)[0]
    return size if size > 0 else 512


def aligned_buffers(count: int, size: int = CHUNK) -> list[memoryview]:
    """Page-aligned buffers (mmap memory), as O_DIRECT wants."""
    return [memoryview(mmap.mmap(-1, size)) for _ in range(count)]


@dataclass(frozen=True)
class Span:
    start: int
    end: int | None  # None: to the end of the stream
    algorithm: str
    digest: str | None  # what the image's bytes must hash to, when the bmap says


class DeviceWriter:
    """Writes spans of an image to ``fd`` and remembers how far it got."""

    def __init__(self, fd: int, device_size: int, device_name: str) -> None:
        self.fd = fd
        self.device_size = device_size
        self.device_name = device_name
        self.bytes_written = 0
        # Set before the first write is issued, not after it returns: a Ctrl-C landing
        # between a write and its count must not report an unchanged device.
        self.touched = False
        self._block = logical_block_size(fd)
        self.direct = _set_direct(fd, True)
        self._cached = False  # some bytes of the current range went through the page cache

    def state(self) -> str:
        """One phrase for the device's state, for messages after an error."""
        if not self.touched:
            return f"{self.device_name} was not changed"
        return (
            f"{self.device_name} holds a partial image ({self.bytes_written} bytes written) "
            "and will not boot: flash it again"
        )

    def write(
        self,
        source: ImageSource,
        bmap: Bmap | None,
        progress: Progress | None = None,
        *,
        hash_image: bool = True,
        range_done: RangeDone | None = None,
    ) -> list[Expected]:
        """Write the image; return what each written range must read back as.

        ``hash_image=False`` skips hashing ranges whose bmap checksum is known (the
        caller then checks the device against the bmap instead). ``range_done`` hears
        of each range as soon as it is written."""
        spans = iter_spans(bmap, source.size)
        written: list[Expected] = []
        digest = None
        seg_start = 0
        hashing: Future[None] | None = None
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="flash") as pool:
            hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="flash-hash")
            try:
                for span, offset, data, ends in _prefetch(pool, _chunks(source, spans)):
                    must_hash = hash_image or span.digest is None
                    if must_hash:
                        if digest is None:
                            digest, seg_start = hashlib.new(span.algorithm), offset
                        hashing = hasher.submit(digest.update, data)
                    self._pwrite(data, offset)
                    if hashing is not None:
                        hashing.result()
                        hashing = None
                    if progress:
                        progress(len(data))
                    if not ends:
                        continue
                    end = offset + len(data)
                    if digest is None:
                        assert span.digest is not None
                        done = Expected(span.start, end, span.algorithm, span.digest)
                    else:
                        actual, digest = digest.hexdigest(), None
                        if span.digest is not None and actual != span.digest:
                            raise FlashError(
                                f"the image's bytes {seg_start}-{end} do not match its bmap "
                                f"(corrupt image or wrong bmap); {self.state()}"
                            )
                        done = Expected(seg_start, end, span.algorithm, actual)
                    written.append(done)
                    if range_done:
                        range_done(done, self.direct and not self._cached)
                    self._cached = False
            finally:
                if hashing is not None:  # let it finish with the buffer before we go
                    with contextlib.suppress(Exception):
                        hashing.result()
                hasher.shutdown()
        os.fsync(self.fd)
        return written

    def _pwrite(self, data: memoryview, offset: int) -> None:
        if offset + len(data) > self.device_size:
            raise FlashError(
                f"the image is larger than {self.device_name} "
                f"({self.device_size} bytes); {self.state()}"
            )
        block = self._block
        if not self.direct or (offset % block == 0 and len(data) % block == 0):
            self._write_all(data, offset)
            return
        self._cached = True
        # An unaligned piece (the image's short last block, or the end of a stream):
        # the aligned part goes direct, the rest through the page cache (fsync'd later).
        head = 0 if offset % block else len(data) - len(data) % block
        self._write_all(data[:head], offset)
        _set_direct(self.fd, False)
        try:
            self._write_all(data[head:], offset + head)
        finally:
            _set_direct(self.fd, True)

    def _write_all(self, data: memoryview, offset: int) -> None:
        done = 0
        self.touched = True
        while done < len(data):
            n = os.pwrite(self.fd, data[done:], offset + done)
            if n <= 0:
                raise FlashError(f"short write at byte {offset + done}; {self.state()}")
            done += n
            self.bytes_written += n


def _set_direct(fd: int, on: bool) -> bool:
    """Switch O_DIRECT on or off for ``fd``; False when the device or file refuses it."""
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    wanted = flags | os.O_DIRECT if on else flags & ~os.O_DIRECT
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, wanted)
    except OSError:
        return False
    return bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT) == on


def iter_spans(bmap: Bmap | None, size: int | None) -> list[Span]:
    """The pieces of the image that are written, each checked as a whole."""
    if bmap is not None:
        algorithm = bmap.checksum_type or "sha256"
        return [Span(*bmap.span(r), algorithm, r.checksum) for r in bmap.ranges]
    if size is None:
        return [Span(0, None, "sha256", None)]
    return [
        Span(start, min(start + SEGMENT, size), "sha256", None) for start in range(0, size, SEGMENT)
    ]


def image_digests(source: ImageSource, spans: Sequence[Span]) -> list[str]:
    """Hash the image's own bytes over ``spans`` (ascending, bounded): used after a
    failed read-back to tell a corrupt image or wrong bmap from a bad device."""
    found: list[str] = []
    digest = None
    for span, _offset, data, ends in _chunks(source, list(spans)):
        digest = digest or hashlib.new(span.algorithm)
        digest.update(data)
        if ends:
            found.append(digest.hexdigest())
            digest = None
    return found


# One item per chunk: (span, device offset, bytes, whether a checked segment ends here).
_Item = tuple[Span, int, memoryview, bool]


def _chunks(source: ImageSource, spans: list[Span]) -> Iterator[_Item]:
    """Yield the image's chunks span by span. Buffers rotate so that the consumer may
    still hold a chunk while the ones read ahead of it are filled."""
    buffers = aligned_buffers(READ_AHEAD + 2)
    turn = 0
    pos = 0  # stream position, for sources that cannot seek
    advised = 0  # spans whose reading has been asked for ahead of time
    for index, span in enumerate(spans):
        if source.raw_fd is not None and ADVISE_AHEAD:
            advised = _advise(source.raw_fd, spans, index, advised)
        if source.raw_fd is None and span.start > pos:
            pos = _skip(source, pos, span.start, buffers[turn])
        offset = span.start
        seg_start = offset
        while span.end is None or offset < span.end:
            view = buffers[turn]
            turn = (turn + 1) % len(buffers)
            want = CHUNK if span.end is None else min(CHUNK, span.end - offset)
            if source.raw_fd is not None:
                got = _pread_fully(source.raw_fd, view[:want], offset)
            else:
                got = read_fully(source.stream, view[:want])
                pos += got
            if got < want and span.end is not None:
                raise FlashError(f"{source.path} ends at byte {offset + got}, before its bmap")
            if got == 0:
                if offset > seg_start:  # streaming without a size: close the last segment
                    yield span, offset, view[:0], True
                break
            offset += got
            if span.end is None:
                # without a size, cut the check into segments as the stream goes
                ends = offset - seg_start >= SEGMENT
                if ends:
                    seg_start = offset
            else:
                ends = offset >= span.end
            yield span, offset - got, view[:got], ends


def _advise(fd: int, spans: list[Span], index: int, advised: int) -> int:
    """Ask the kernel to start reading the spans that follow, up to ADVISE_AHEAD bytes:
    the image's ranges are apart, so its own readahead stops at the end of each."""
    limit = spans[index].start + ADVISE_AHEAD
    advised = max(advised, index + 1)
    while advised < len(spans) and spans[advised].start < limit:
        span = spans[advised]
        if span.end is not None:
            os.posix_fadvise(fd, span.start, span.end - span.start, os.POSIX_FADV_WILLNEED)
        advised += 1
    return advised


def _skip(source: ImageSource, pos: int, target: int, scratch: memoryview) -> int:
    while pos < target:
        got = read_fully(source.stream, scratch[: min(len(scratch), target - pos)])
        if got == 0:
            raise FlashError(f"{source.path} ends at byte {pos}, before its bmap")
        pos += got
    return pos


def _pread_fully(fd: int, view: memoryview, offset: int) -> int:
    got = 0
    while got < len(view):
        n = os.preadv(fd, [view[got:]], offset + got)
        if n == 0:
            break
        got += n
    return got


def _prefetch(pool: ThreadPoolExecutor, items: Iterator[_Item]) -> Iterator[_Item]:
    """Run ``items`` up to READ_AHEAD steps ahead in ``pool``. The steps of one generator
    must not run at once, so each waits for the one before it."""
    sentinel = object()
    pending: list[Future[_Item | object]] = []

    def step(before: Future[_Item | object] | None) -> _Item | object:
        if before is not None:
            before.exception()  # wait; its own error is raised to the caller in order
        return next(items, sentinel)

    def submit() -> None:
        pending.append(pool.submit(step, pending[-1] if pending else None))

    try:
        for _ in range(READ_AHEAD):
            submit()
        while True:
            item = pending.pop(0).result()
            if item is sentinel:
                return
            submit()
            yield item  # type: ignore[misc]
    finally:
        for future in pending:
            future.cancel()
        # let a running step finish before the generator is closed under it
        for future in pending:
            with contextlib.suppress(Exception):  # the first error is already on its way
                future.result()
        items.close()  # type: ignore[attr-defined]
