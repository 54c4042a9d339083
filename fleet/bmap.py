"""bmaptool's block map (``.bmap``): which blocks of a disk image hold data, each range
with its checksum, so a flasher writes only those and can prove what it wrote.

We make format 2.0 (SHA-256, the newest ``bmaptool copy`` reads) from the holes of a
sparse image file, and we read 1.2 to 2.0 as bmaptool makes them. A .bmap travels next
to an image from anywhere, so parsing treats it as hostile: size limits, no DTD or
entities, every number range-checked, ranges sorted, disjoint and inside the image.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import xml.parsers.expat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fleet import atomic
from fleet.errors import UsageError

BLOCK_SIZE = 4096
FORMAT_VERSION = "2.0"
# A 2 TiB image with every other block mapped would need far less than this.
MAX_BMAP_BYTES = 64 * 1024 * 1024
MAX_IMAGE_SIZE = 1 << 50
_CHUNK = 8 * 1024 * 1024
_HEX_LENGTH = {"sha256": 64, "sha1": 40}
_VERSION_RE = re.compile(r"^([0-9]{1,3})\.([0-9]{1,3})$")
_RANGE_RE = re.compile(r"^([0-9]{1,20})(?:-([0-9]{1,20}))?$")


class BmapError(UsageError):
    """A .bmap file is malformed, unsupported or does not match its image."""


@dataclass(frozen=True)
class BmapRange:
    first: int  # first block, inclusive
    last: int  # last block, inclusive
    checksum: str | None  # hex digest of the range's bytes; None only in format 1.2


@dataclass(frozen=True)
class Bmap:
    version: str
    image_size: int
    block_size: int
    checksum_type: str | None  # "sha256" or "sha1"; None for format 1.2 (no checksums)
    ranges: tuple[BmapRange, ...]

    @property
    def blocks_count(self) -> int:
        return -(-self.image_size // self.block_size)

    @property
    def mapped_blocks(self) -> int:
        return sum(r.last - r.first + 1 for r in self.ranges)

    def span(self, r: BmapRange) -> tuple[int, int]:
        """Byte offsets [start, end) of a range; the image's last block may be short."""
        return r.first * self.block_size, min((r.last + 1) * self.block_size, self.image_size)

    @property
    def mapped_bytes(self) -> int:
        return sum(end - start for start, end in map(self.span, self.ranges))


# ---------------------------------------------------------------------------- create


def mapped_extents(image: Path, block_size: int = BLOCK_SIZE) -> list[tuple[int, int]]:
    """Byte ranges [start, end) of ``image`` that hold data, widened to whole blocks
    (the last one clipped at the end of the file) and merged when they touch."""
    size = image.stat().st_size
    extents: list[tuple[int, int]] = []
    fd = os.open(image, os.O_RDONLY)
    try:
        offset = 0
        while offset < size:
            try:
                start = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # no data after offset
                    break
                raise
            end = os.lseek(fd, start, os.SEEK_HOLE)
            lo = start - start % block_size
            hi = min(-(-end // block_size) * block_size, size)
            if extents and lo <= extents[-1][1]:
                extents[-1] = (extents[-1][0], max(hi, extents[-1][1]))
            else:
                extents.append((lo, hi))
            offset = end
    finally:
        os.close(fd)
    return extents


def create_bmap(image: Path) -> Bmap:
    """The block map of a (sparse) image file, each mapped range hashed with SHA-256."""
    size = image.stat().st_size
    ranges: list[BmapRange] = []
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    with open(image, "rb", buffering=0) as handle:
        for start, end in mapped_extents(image):
            digest = hashlib.sha256()
            pos = start
            while pos < end:
                want = min(_CHUNK, end - pos)
                got = os.preadv(handle.fileno(), [view[:want]], pos)
                if got <= 0:
                    raise BmapError(f"{image}: shrank while it was being mapped")
                digest.update(view[:got])
                pos += got
            ranges.append(
                BmapRange(start // BLOCK_SIZE, -(-end // BLOCK_SIZE) - 1, digest.hexdigest())
            )
    return Bmap(FORMAT_VERSION, size, BLOCK_SIZE, "sha256", tuple(ranges))


def render_bmap(bmap: Bmap) -> bytes:
    """The .bmap file's bytes: deterministic (no dates, no host names), self-checksummed."""
    if bmap.checksum_type != "sha256":
        raise BmapError("only SHA-256 block maps are written")
    zero = "0" * 64
    lines = [
        '<?xml version="1.0" ?>',
        "<!-- Block map of a disk image, bmaptool format 2.0, made by fleet. Only the",
        "     listed block ranges hold data; each range carries the SHA-256 of its bytes.",
        "     BmapFileChecksum is the SHA-256 of this file with that value set to zeros. -->",
        f'<bmap version="{FORMAT_VERSION}">',
        f"    <ImageSize> {bmap.image_size} </ImageSize>",
        f"    <BlockSize> {bmap.block_size} </BlockSize>",
        f"    <BlocksCount> {bmap.blocks_count} </BlocksCount>",
        f"    <MappedBlocksCount> {bmap.mapped_blocks} </MappedBlocksCount>",
        "    <ChecksumType> sha256 </ChecksumType>",
        f"    <BmapFileChecksum> {zero} </BmapFileChecksum>",
        "    <BlockMap>",
    ]
    for r in bmap.ranges:
        blocks = f"{r.first}-{r.last}" if r.last != r.first else f"{r.first}"
        lines.append(f'        <Range chksum="{r.checksum}"> {blocks} </Range>')
    lines += ["    </BlockMap>", "</bmap>", ""]
    text = "\n".join(lines).encode()
    digest = hashlib.sha256(text).hexdigest()
    return text.replace(zero.encode(), digest.encode(), 1)


def write_bmap(image: Path, bmap_path: Path) -> None:
    """Write the .bmap of ``image`` to ``bmap_path`` atomically; same image, same bytes."""
    atomic.write_bytes(bmap_path, render_bmap(create_bmap(image)))


# ----------------------------------------------------------------------------- parse


@dataclass
class _Element:
    name: str
    attrs: dict[str, str]
    text: str = ""


class _Collector:
    """Reads the flat shape of a .bmap with expat and refuses everything else."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.stack: list[str] = []
        self.root_attrs: dict[str, str] | None = None
        self.fields: dict[str, _Element] = {}
        self.ranges: list[_Element] = []
        self.current: _Element | None = None

    def fail(self, message: str) -> BmapError:
        return BmapError(f"{self.source}: {message}")

    def start(self, name: str, attrs: dict[str, str]) -> None:
        depth = len(self.stack)
        if depth == 0:
            if name != "bmap":
                raise self.fail(f"root element is <{name}>, not <bmap>")
            self.root_attrs = dict(attrs)
        elif depth == 1:
            if name in self.fields:
                raise self.fail(f"<{name}> appears twice")
            self.current = _Element(name, dict(attrs))
            self.fields[name] = self.current
        elif depth == 2 and self.stack[1] == "BlockMap" and name == "Range":
            self.current = _Element(name, dict(attrs))
            self.ranges.append(self.current)
        else:
            raise self.fail(f"unexpected <{name}> inside <{self.stack[-1]}>")
        self.stack.append(name)

    def end(self, name: str) -> None:
        self.stack.pop()
        self.current = None

    def text(self, data: str) -> None:
        if self.current is not None:
            if len(self.current.text) > 200:
                raise self.fail(f"<{self.current.name}> text is too long")
            self.current.text += data

    def refuse_dtd(self, *args: object) -> None:
        raise self.fail("a DOCTYPE or entity declaration is not allowed in a .bmap")


def _collect(data: bytes, source: str) -> _Collector:
    collector = _Collector(source)
    parser = xml.parsers.expat.ParserCreate()
    parser.StartElementHandler = collector.start
    parser.EndElementHandler = collector.end
    parser.CharacterDataHandler = collector.text
    parser.StartDoctypeDeclHandler = collector.refuse_dtd
    parser.EntityDeclHandler = collector.refuse_dtd
    try:
        parser.Parse(data, True)
    except xml.parsers.expat.ExpatError as exc:
        raise BmapError(f"{source}: not well-formed XML: {exc}") from exc
    if collector.root_attrs is None:
        raise BmapError(f"{source}: empty document")
    return collector


def parse_bmap(data: bytes, source: str = "bmap") -> Bmap:
    """Validate and read a .bmap (ours or bmaptool's). ``source`` names it in errors."""
    if len(data) > MAX_BMAP_BYTES:
        raise BmapError(f"{source}: larger than {MAX_BMAP_BYTES} bytes, refusing to read it")
    doc = _collect(data, source)
    assert doc.root_attrs is not None

    def fail(message: str) -> BmapError:
        return BmapError(f"{source}: {message}")

    version = doc.root_attrs.get("version", "")
    match = _VERSION_RE.match(version)
    if not match:
        raise fail(f"bad format version {version!r}")
    major, minor = int(match[1]), int(match[2])
    if major > 2 or (major == 1 and minor < 2) or major < 1:
        raise fail(f"format version {version} is not supported (1.2 to 2.x are)")

    def number(name: str, low: int, high: int) -> int:
        element = doc.fields.get(name)
        if element is None:
            raise fail(f"<{name}> is missing")
        text = element.text.strip()
        if not text.isdigit() or len(text) > 20:
            raise fail(f"<{name}> is not a whole number: {text[:40]!r}")
        value = int(text)
        if not low <= value <= high:
            raise fail(f"<{name}> {value} is out of range [{low}, {high}]")
        return value

    image_size = number("ImageSize", 1, MAX_IMAGE_SIZE)
    block_size = number("BlockSize", 512, 64 * 1024 * 1024)
    if block_size & (block_size - 1):
        raise fail(f"<BlockSize> {block_size} is not a power of two")
    blocks_count = number("BlocksCount", 1, MAX_IMAGE_SIZE)
    if blocks_count != -(-image_size // block_size):
        raise fail(f"<BlocksCount> {blocks_count} does not match ImageSize / BlockSize")
    mapped_count = number("MappedBlocksCount", 0, blocks_count)

    checksum_type, file_checksum_field, range_attr = _checksum_scheme(doc, major, minor, fail)
    if "BlockMap" not in doc.fields:
        raise fail("<BlockMap> is missing")

    ranges: list[BmapRange] = []
    for element in doc.ranges:
        text = element.text.strip()
        m = _RANGE_RE.match(text)
        if not m:
            raise fail(f"bad <Range> {text[:40]!r}")
        first = int(m[1])
        last = int(m[2]) if m[2] is not None else first
        if last < first or last >= blocks_count:
            raise fail(f"<Range> {text} is outside the image's {blocks_count} blocks")
        if ranges and first <= ranges[-1].last:
            raise fail(f"<Range> {text} overlaps or is out of order")
        checksum = None
        if range_attr is not None:
            checksum = element.attrs.get(range_attr, "").strip().lower()
            assert checksum_type is not None
            if not re.fullmatch(f"[0-9a-f]{{{_HEX_LENGTH[checksum_type]}}}", checksum):
                raise fail(f"<Range> {text} has no valid {checksum_type} checksum")
        ranges.append(BmapRange(first, last, checksum))
    bmap = Bmap(version, image_size, block_size, checksum_type, tuple(ranges))
    if bmap.mapped_blocks != mapped_count:
        raise fail(
            f"<MappedBlocksCount> says {mapped_count} but the ranges hold {bmap.mapped_blocks}"
        )
    if file_checksum_field is not None:
        assert checksum_type is not None
        _check_file_checksum(data, doc, file_checksum_field, checksum_type, fail)
    return bmap


def _checksum_scheme(
    doc: _Collector, major: int, minor: int, fail: Callable[[str], BmapError]
) -> tuple[str | None, str | None, str | None]:
    """(checksum type, file checksum element, range attribute) for a format version."""
    if major == 1 and minor == 2:
        return None, None, None
    if major == 1 and minor == 3:
        return "sha1", "BmapFileSHA1", "sha1"
    element = doc.fields.get("ChecksumType")
    kind = element.text.strip().lower() if element else ""
    if kind not in _HEX_LENGTH:
        raise fail(f"<ChecksumType> {kind[:20]!r} is not supported (sha256 or sha1)")
    return kind, "BmapFileChecksum", "chksum"


def _check_file_checksum(
    data: bytes, doc: _Collector, field: str, kind: str, fail: Callable[[str], BmapError]
) -> None:
    element = doc.fields.get(field)
    stated = element.text.strip().lower() if element else ""
    if not re.fullmatch(f"[0-9a-f]{{{_HEX_LENGTH[kind]}}}", stated):
        raise fail(f"<{field}> is missing or not a {kind} digest")
    # The checksum was computed with its own value written as zeros; bmaptool finds the
    # value by its first occurrence in the file, and so must we to agree with it.
    raw = element.text.strip().encode() if element else b""
    at = data.find(raw)
    zeroed = data[:at] + b"0" * len(raw) + data[at + len(raw) :]
    actual = hashlib.new(kind, zeroed).hexdigest()
    if actual != stated:
        raise fail(f"the file's own checksum does not match (stated {stated}, is {actual})")


def load_bmap(path: Path) -> Bmap:
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_BMAP_BYTES + 1)
    except OSError as exc:
        raise BmapError(f"cannot read {path}: {exc.strerror}") from exc
    return parse_bmap(data, str(path))
