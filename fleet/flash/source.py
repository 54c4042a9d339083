"""The image to flash, raw or compressed, read as one forward stream of its bytes.

Compression is recognised by magic bytes, not by the file name, and decompressed on the
fly (gzip, xz, zstd): nothing is ever unpacked to disk first. A raw image also allows
random access, which lets a bmap-guided writer skip holes without reading them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

from fleet.errors import UsageError

_MAGIC = {
    b"\x1f\x8b": "gzip",
    b"\xfd7zXZ\x00": "xz",
    b"\x28\xb5\x2f\xfd": "zstd",
}
SUFFIXES = (".gz", ".xz", ".zst")


class ByteStream(Protocol):
    def readinto(self, buffer: memoryview, /) -> int: ...

    def close(self) -> None: ...


@dataclass
class ImageSource:
    """An open image. ``stream`` yields the disk bytes in order from offset 0."""

    path: Path
    compression: str | None
    size: int | None  # bytes of disk image once decompressed, when known up front
    stream: ByteStream
    raw_fd: int | None  # set for an uncompressed image: pread at any offset
    _closers: list[ByteStream] = field(default_factory=list)

    def close(self) -> None:
        for handle in reversed(self._closers):
            handle.close()

    def __enter__(self) -> ImageSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def detect_compression(path: Path) -> str | None:
    with open(path, "rb") as handle:
        head = handle.read(6)
    for magic, name in _MAGIC.items():
        if head.startswith(magic):
            return name
    return None


def open_image(path: Path) -> ImageSource:
    try:
        compression = detect_compression(path)
        raw = open(path, "rb")  # noqa: SIM115 - closed by ImageSource.close
    except OSError as exc:
        raise UsageError(f"cannot read image {path}: {exc.strerror}") from exc
    if compression is None:
        raw_size = os.fstat(raw.fileno()).st_size
        return ImageSource(path, None, raw_size, raw, raw.fileno(), [raw])
    # Each decompressor is imported only for its own kind of image: a raw image (the
    # common case at a desk) then starts without loading three compression libraries.
    stream: ByteStream
    size: int | None = None
    if compression == "gzip":
        import gzip

        stream = gzip.GzipFile(fileobj=raw, mode="rb")
    elif compression == "xz":
        import lzma

        stream = lzma.LZMAFile(raw, mode="rb")  # noqa: SIM115 - closed by ImageSource.close
    else:
        import zstandard

        size = _zstd_content_size(raw)
        reader = zstandard.ZstdDecompressor().stream_reader(raw, read_size=4 * 1024 * 1024)
        stream = reader
    return ImageSource(path, compression, size, stream, None, [raw, stream])


def _zstd_content_size(raw: BinaryIO) -> int | None:
    import zstandard

    head = raw.read(18)
    raw.seek(0)
    try:
        size = zstandard.frame_content_size(head)
    except zstandard.ZstdError:
        return None
    return size if size >= 0 else None


def bmap_candidates(image: Path) -> list[Path]:
    """Where a .bmap for ``image`` may lie: next to it with .bmap added, or next to the
    uncompressed name (disk.img.zst -> disk.img.bmap), as bmaptool looks."""
    names = [image.with_name(image.name + ".bmap")]
    if image.suffix in SUFFIXES:
        plain = image.with_suffix("")
        names.append(plain.with_name(plain.name + ".bmap"))
        names.append(plain.with_suffix(".bmap"))
    names.append(image.with_suffix(".bmap"))
    seen: list[Path] = []
    for name in names:
        if name not in seen and name != image:
            seen.append(name)
    return seen


def read_fully(stream: ByteStream, view: memoryview) -> int:
    """Fill ``view`` from ``stream``; fewer bytes only at the end of the stream."""
    got = 0
    while got < len(view):
        n = stream.readinto(view[got:])
        if not n:
            break
        got += n
    return got
