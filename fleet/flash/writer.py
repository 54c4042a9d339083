"""Write an image onto an open block device: only the bmap's ranges when there is a
bmap, every byte otherwise; each range hashed in the same pass that writes it.

Reading (and decompressing) the next chunk runs in a helper thread while the current
one is hashed and written, so a two-core machine keeps both the source and the device
busy. The writer keeps count of what it has done, so that an error or Ctrl-C can say
what state the device is left in.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from fleet.bmap import Bmap
from fleet.errors import FlashError
from fleet.flash.source import ImageSource, read_fully

CHUNK = 8 * 1024 * 1024
# Without a bmap the image is checked in segments, so a bad read-back names a place.
SEGMENT = 64 * 1024 * 1024

Progress = Callable[[int], None]


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


@dataclass(frozen=True)
class _Span:
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

    def state(self) -> str:
        """One phrase for the device's state, for messages after an error."""
        if self.bytes_written == 0:
            return f"{self.device_name} was not changed"
        return (
            f"{self.device_name} holds a partial image ({self.bytes_written} bytes written) "
            "and will not boot: flash it again"
        )

    def write(
        self, source: ImageSource, bmap: Bmap | None, progress: Progress | None = None
    ) -> list[Expected]:
        """Write the image; return what each written range must read back as."""
        spans = _spans(bmap, source.size)
        written: list[Expected] = []
        digest = None
        seg_start = 0
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="flash-read") as pool:
            # The helper thread reads (and decompresses); this one hashes and writes.
            for span, offset, data, ends in _prefetch(pool, _chunks(source, spans)):
                if digest is None:
                    digest, seg_start = hashlib.new(span.algorithm), offset
                digest.update(data)
                self._pwrite(data, offset)
                if progress:
                    progress(len(data))
                if ends:
                    end, actual = offset + len(data), digest.hexdigest()
                    digest = None
                    if span.digest is not None and actual != span.digest:
                        raise FlashError(
                            f"the image's bytes {seg_start}-{end} do not match its bmap "
                            f"(corrupt image or wrong bmap); {self.state()}"
                        )
                    written.append(Expected(seg_start, end, span.algorithm, actual))
        os.fsync(self.fd)
        return written

    def _pwrite(self, data: memoryview, offset: int) -> None:
        if offset + len(data) > self.device_size:
            raise FlashError(
                f"the image is larger than {self.device_name} "
                f"({self.device_size} bytes); {self.state()}"
            )
        done = 0
        while done < len(data):
            n = os.pwrite(self.fd, data[done:], offset + done)
            if n <= 0:
                raise FlashError(f"short write at byte {offset + done}; {self.state()}")
            done += n
            self.bytes_written += n


def _spans(bmap: Bmap | None, size: int | None) -> list[_Span]:
    if bmap is not None:
        algorithm = bmap.checksum_type or "sha256"
        return [_Span(*bmap.span(r), algorithm, r.checksum) for r in bmap.ranges]
    if size is None:
        return [_Span(0, None, "sha256", None)]
    return [
        _Span(start, min(start + SEGMENT, size), "sha256", None)
        for start in range(0, size, SEGMENT)
    ]


# One item per chunk: (span, device offset, bytes, whether a checked segment ends here).
_Item = tuple[_Span, int, memoryview, bool]


def _chunks(source: ImageSource, spans: list[_Span]) -> Iterator[_Item]:
    """Yield the image's chunks span by span. Buffers rotate so that the consumer may
    still hold the previous chunk while the next one is filled."""
    buffers = [memoryview(bytearray(CHUNK)) for _ in range(3)]
    turn = 0
    pos = 0  # stream position, for sources that cannot seek
    for span in spans:
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
    """Run ``items`` one step ahead in ``pool``: the next chunk is read and hashed while
    the caller writes the current one. Three rotating buffers keep them apart."""
    sentinel = object()

    def step() -> _Item | object:
        return next(items, sentinel)

    pending: Future[_Item | object] = pool.submit(step)
    try:
        while True:
            item = pending.result()
            if item is sentinel:
                return
            pending = pool.submit(step)
            yield item  # type: ignore[misc]
    finally:
        pending.cancel()
        # let a running step finish before the generator is closed under it
        with contextlib.suppress(Exception):  # the first error is already on its way
            pending.result()
        items.close()  # type: ignore[attr-defined]
