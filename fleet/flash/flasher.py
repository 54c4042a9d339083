"""One flash from start to end: image and bmap in, checked device out, with a result
that says what was written and how it was verified."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleet.bmap import Bmap, load_bmap
from fleet.errors import FlashError
from fleet.flash.discovery import BlockDevice
from fleet.flash.source import ImageSource, bmap_candidates, open_image
from fleet.flash.verify import DeviceChecker, Mismatch, check_device, verification_error
from fleet.flash.writer import DeviceWriter, Expected, RangeDone, Span, image_digests

# Called with (phase, total bytes or None); returns the per-chunk advance callback.
PhaseHook = Callable[[str, int | None], Callable[[int], None]]


@dataclass(frozen=True)
class FlashResult:
    image: str
    device: str
    compression: str | None
    bmap: str | None
    image_size: int | None
    bytes_written: int
    verified: bool
    write_seconds: float
    verify_seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "device": self.device,
            "compression": self.compression,
            "bmap": self.bmap,
            "image_size": self.image_size,
            "bytes_written": self.bytes_written,
            "verified": self.verified,
            "write_seconds": round(self.write_seconds, 3),
            "verify_seconds": round(self.verify_seconds, 3),
        }


def find_bmap(
    image: Path, explicit: Path | None, use_bmap: bool
) -> tuple[Bmap | None, Path | None]:
    if not use_bmap:
        return None, None
    if explicit is not None:
        return load_bmap(explicit), explicit
    for candidate in bmap_candidates(image):
        if candidate.is_file():
            return load_bmap(candidate), candidate
    return None, None


def image_size(source: ImageSource, bmap: Bmap | None) -> int | None:
    if bmap is not None:
        if source.size is not None and source.size != bmap.image_size:
            raise FlashError(
                f"{source.path} is {source.size} bytes but its bmap says {bmap.image_size}: "
                "wrong bmap for this image"
            )
        return bmap.image_size
    return source.size


def flash(
    source: ImageSource,
    bmap: Bmap | None,
    bmap_path: Path | None,
    device: BlockDevice,
    held: tuple[int, int],
    *,
    verify: bool = True,
    phase: PhaseHook | None = None,
) -> FlashResult:
    """Write ``source`` to ``device`` (already checked by the caller) through ``held``,
    the (fd, size) of ``safety.exclusive``, which the caller keeps open past its own last
    write; sync, verify."""
    fd, size = held
    writer = DeviceWriter(fd, size, device.node)
    try:
        started = time.monotonic()
        total = bmap.mapped_bytes if bmap is not None else source.size
        advance = phase("writing", total) if phase else None
        # With a read-back against the bmap's own checksums, that read-back also proves
        # the image matched its bmap: hashing the image while writing would be redundant.
        hash_image = not (verify and bmap is not None and bmap.checksum_type is not None)
        checker = _early_checker(device, writer, total, phase) if verify else None
        bad: list[Mismatch] = []
        try:
            written = writer.write(
                source,
                bmap,
                advance,
                hash_image=hash_image,
                range_done=_read_back_early(checker) if checker else None,
            )
            wrote_at = time.monotonic()
            if checker is not None:
                bad = checker.results()
            elif verify:
                total = sum(e.end - e.start for e in written)
                check = phase("verifying", total) if phase else None
                bad = check_device(Path(device.node), written, check)
        finally:
            if checker is not None:
                checker.close()
        if bad:
            if not hash_image:
                assert bmap is not None and bmap.checksum_type is not None
                spans = [Span(b.start, b.end, bmap.checksum_type, b.expected) for b in bad]
                _blame_image(source.path, spans, writer)
            raise verification_error(Path(device.node), bad)
        verified_at = time.monotonic()
    except KeyboardInterrupt:
        raise FlashError(f"interrupted; {writer.state()}") from None
    except OSError as exc:
        raise FlashError(f"{exc.strerror or exc}; {writer.state()}") from exc
    return FlashResult(
        image=str(source.path),
        device=device.node,
        compression=source.compression,
        bmap=str(bmap_path) if bmap_path else None,
        image_size=bmap.image_size if bmap else source.size,
        bytes_written=writer.bytes_written,
        verified=verify,
        write_seconds=wrote_at - started,
        verify_seconds=verified_at - wrote_at,
    )


def _early_checker(
    device: BlockDevice, writer: DeviceWriter, total: int | None, phase: PhaseHook | None
) -> DeviceChecker | None:
    """A checker that reads ranges back while later ones are written, when both the
    writes and the reads bypass the page cache (a write that returned is then on the
    device, and a read cannot be served from memory); None when either is cached, and
    the read-back then waits for the fsync."""
    if not writer.direct:
        return None
    check = phase("verifying", total) if phase else None
    checker = DeviceChecker(Path(device.node), check)
    if not checker.direct:
        checker.close()
        return None
    return checker


def _read_back_early(checker: DeviceChecker) -> RangeDone:
    def done(item: Expected, on_device: bool) -> None:
        if on_device:
            checker.submit(item)
        else:  # partly in the page cache until the fsync at the end of writing
            checker.after_sync.append(item)

    return done


def _blame_image(path: Path, spans: list[Span], writer: DeviceWriter) -> None:
    """Raise the image's fault when the ranges that read back wrong are already wrong in
    the image itself (corrupt image or wrong bmap), rather than on the device."""
    with open_image(path) as again:
        actual = image_digests(again, spans)
    for span, digest in zip(spans, actual, strict=True):
        if digest != span.digest:
            raise FlashError(
                f"the image's bytes {span.start}-{span.end} do not match its bmap "
                f"(corrupt image or wrong bmap); {writer.state()}"
            )


__all__ = ["FlashResult", "find_bmap", "flash", "image_size", "open_image"]
