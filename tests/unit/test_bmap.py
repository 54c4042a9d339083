"""The .bmap reader and writer: round trip, bmaptool's older formats, hostile input."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from fleet.bmap import Bmap, BmapError, BmapRange, create_bmap, parse_bmap, render_bmap

pytestmark = pytest.mark.unit

SHA = "ab" * 32


def doc(body: str, version: str = "2.0", fix_checksum: bool = True) -> bytes:
    text = f'<?xml version="1.0" ?>\n<bmap version="{version}">\n{body}\n</bmap>\n'.encode()
    if fix_checksum and b"BmapFileChecksum" in text:
        digest = hashlib.sha256(text).hexdigest().encode()
        text = text.replace(b"0" * 64, digest, 1)
    return text


def fields(size: int = 40960, blocks: int = 10, mapped: int = 3, ranges: str = "") -> str:
    ranges = ranges or f'<Range chksum="{SHA}"> 0-1 </Range><Range chksum="{SHA}"> 7 </Range>'
    return (
        f"<ImageSize> {size} </ImageSize><BlockSize> 4096 </BlockSize>"
        f"<BlocksCount> {blocks} </BlocksCount><MappedBlocksCount> {mapped} </MappedBlocksCount>"
        f"<ChecksumType> sha256 </ChecksumType><BmapFileChecksum> {'0' * 64} </BmapFileChecksum>"
        f"<BlockMap>{ranges}</BlockMap>"
    )


def test_round_trip_and_deterministic() -> None:
    bmap = Bmap("2.0", 10_000, 4096, "sha256", (BmapRange(0, 0, SHA), BmapRange(2, 2, SHA)))
    data = render_bmap(bmap)
    assert render_bmap(bmap) == data
    parsed = parse_bmap(data)
    assert parsed == bmap
    assert parsed.span(parsed.ranges[1]) == (8192, 10_000)  # last block is short
    assert parsed.mapped_bytes == 4096 + 1808


def test_reads_single_block_and_multi_block_ranges() -> None:
    bmap = parse_bmap(doc(fields()))
    assert [(r.first, r.last) for r in bmap.ranges] == [(0, 1), (7, 7)]
    assert bmap.mapped_blocks == 3


def test_reads_format_1_3_with_sha1() -> None:
    sha1 = "cd" * 20
    body = (
        "<ImageSize> 8192 </ImageSize><BlockSize> 4096 </BlockSize><BlocksCount> 2 "
        "</BlocksCount><MappedBlocksCount> 1 </MappedBlocksCount>"
        f"<BmapFileSHA1> {'0' * 40} </BmapFileSHA1>"
        f'<BlockMap><Range sha1="{sha1}"> 1 </Range></BlockMap>'
    )
    text = doc(body, "1.3", fix_checksum=False)
    text = text.replace(b"0" * 40, hashlib.sha1(text).hexdigest().encode(), 1)
    bmap = parse_bmap(text)
    assert bmap.checksum_type == "sha1" and bmap.ranges[0].checksum == sha1


def test_reads_format_1_2_without_checksums() -> None:
    body = (
        "<ImageSize> 8192 </ImageSize><BlockSize> 4096 </BlockSize><BlocksCount> 2 "
        "</BlocksCount><MappedBlocksCount> 2 </MappedBlocksCount>"
        "<BlockMap><Range> 0-1 </Range></BlockMap>"
    )
    bmap = parse_bmap(doc(body, "1.2"))
    assert bmap.checksum_type is None and bmap.ranges[0].checksum is None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (doc(fields(), version="3.0"), "not supported"),
        (doc(fields(), version="two"), "bad format version"),
        (doc(fields(blocks=11)), "does not match ImageSize"),
        (doc(fields(mapped=4)), "MappedBlocksCount"),
        (doc(fields(ranges=f'<Range chksum="{SHA}"> 9-10 </Range>', mapped=2)), "outside"),
        (
            doc(
                fields(
                    ranges=f'<Range chksum="{SHA}"> 3-5 </Range><Range chksum="{SHA}"> 5 </Range>',
                    mapped=4,
                )
            ),
            "overlaps",
        ),
        (doc(fields(ranges='<Range chksum="xyz"> 1 </Range>', mapped=1)), "checksum"),
        (doc(fields(ranges=f'<Range chksum="{SHA}"> -1 </Range>', mapped=1)), "bad <Range>"),
        (doc(fields(size=0)), "out of range"),
        (doc(fields(), fix_checksum=False), "own checksum does not match"),
        (doc(fields()).replace(b"<BlockMap>", b"<BlockMap><Evil/>"), "unexpected <Evil>"),
        (b"<notbmap/>", "not <bmap>"),
        (b"<bmap version='2.0'>", "not well-formed"),
        (b"", "not well-formed"),
    ],
)
def test_refuses_bad_bmaps(data: bytes, message: str) -> None:
    with pytest.raises(BmapError, match=message):
        parse_bmap(data, "x.bmap")


def test_refuses_entities_and_doctype() -> None:
    bomb = (
        b'<?xml version="1.0"?><!DOCTYPE bmap [<!ENTITY a "aaaaaaaaaa">'
        b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]><bmap version="2.0">&b;</bmap>'
    )
    with pytest.raises(BmapError, match="DOCTYPE or entity"):
        parse_bmap(bomb)


def test_refuses_huge_input() -> None:
    with pytest.raises(BmapError, match="larger than"):
        parse_bmap(b" " * (64 * 1024 * 1024 + 1))


def test_create_from_sparse_file(tmp_path: Path) -> None:
    image = tmp_path / "sparse.img"
    with open(image, "wb") as handle:
        handle.truncate(1024 * 1024 + 100)  # last block short
        handle.seek(8192 + 10)
        handle.write(b"x" * 5000)
        handle.seek(1024 * 1024 + 50)
        handle.write(b"tail")
    bmap = create_bmap(image)
    data = image.read_bytes()
    assert bmap.image_size == len(data)
    for r in bmap.ranges:
        start, end = bmap.span(r)
        assert hashlib.sha256(data[start:end]).hexdigest() == r.checksum
    mapped = {b for r in bmap.ranges for b in range(r.first, r.last + 1)}
    assert {2, 3, 256} <= mapped and 100 not in mapped
