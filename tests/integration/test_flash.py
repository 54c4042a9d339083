"""fleet flash onto real loop devices: bmap writes, compressed inputs, read-back
verification, and the refusals (mounted, too small, no terminal)."""

from __future__ import annotations

import gzip
import json
import lzma
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard
from terminal import run_on_terminal

from fleet.bmap import create_bmap, load_bmap, write_bmap
from fleet.errors import FlashError
from fleet.flash.verify import check_device, verify_device
from fleet.flash.writer import expectations

pytestmark = pytest.mark.integration

FLEET = str(Path(sys.executable).parent / "fleet")
MiB = 1024 * 1024
# (offset, length) of the data written into the 64 MiB test image
DATA = [(0, 1 * MiB), (5 * MiB + 4096, 3 * MiB), (40 * MiB, 8192), (64 * MiB - 4096, 4096)]


def make_image(path: Path, size: int = 64 * MiB) -> Path:
    rng = __import__("random").Random(1234)
    with open(path, "wb") as handle:
        handle.truncate(size)
        for offset, length in DATA:
            handle.seek(offset)
            handle.write(rng.randbytes(length))
    return path


@pytest.fixture
def image(tmp_path: Path) -> Path:
    img = make_image(tmp_path / "disk.img")
    write_bmap(img, tmp_path / "disk.img.bmap")
    return img


def _attach(backing: Path) -> str:
    out = subprocess.run(
        ["losetup", "--find", "--show", str(backing)], check=True, capture_output=True, text=True
    )
    return out.stdout.strip()


@pytest.fixture
def loop_factory(tmp_path: Path) -> Iterator[object]:
    attached: list[str] = []

    def make(size: int = 64 * MiB, fill: bytes | None = b"\xa5") -> tuple[str, Path]:
        backing = tmp_path / f"target{len(attached)}.img"
        with open(backing, "wb") as handle:
            if fill is None:
                handle.truncate(size)
            else:
                chunk = fill * MiB
                for _ in range(size // MiB):
                    handle.write(chunk)
        node = _attach(backing)
        attached.append(node)
        return node, backing

    yield make
    for node in attached:
        subprocess.run(["losetup", "-d", node], check=False)


@pytest.fixture
def loop(loop_factory: object) -> tuple[str, Path]:
    return loop_factory()  # type: ignore[operator]


def fleet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FLEET, *args], capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120
    )


def read(node: str, offset: int, length: int) -> bytes:
    fd = os.open(node, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)


def test_bmap_flash_writes_only_mapped_ranges(image: Path, loop: tuple[str, Path]) -> None:
    node, _ = loop
    result = fleet("flash", str(image), "--device", node, "--yes", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    bmap = load_bmap(image.with_name("disk.img.bmap"))
    assert report["verified"] is True
    assert report["bmap"].endswith("disk.img.bmap")
    assert report["bytes_written"] == bmap.mapped_bytes < 64 * MiB // 4
    data = image.read_bytes()
    for offset, length in DATA:
        assert read(node, offset, length) == data[offset : offset + length]
    # a hole of the image was not written: the target's old bytes are still there
    assert read(node, 20 * MiB, 4096) == b"\xa5" * 4096


@pytest.mark.parametrize("kind", ["gz", "xz", "zst"])
def test_compressed_image_with_bmap(
    image: Path, loop: tuple[str, Path], tmp_path: Path, kind: str
) -> None:
    node, _ = loop
    raw = image.read_bytes()
    packed = tmp_path / f"disk.img.{kind}"
    if kind == "gz":
        packed.write_bytes(gzip.compress(raw, 1))
    elif kind == "xz":
        packed.write_bytes(lzma.compress(raw, preset=0))
    else:
        packed.write_bytes(zstandard.ZstdCompressor().compress(raw))
    result = fleet("flash", str(packed), "-d", node, "--yes", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["compression"] == {"gz": "gzip", "xz": "xz", "zst": "zstd"}[kind]
    assert report["bmap"].endswith("disk.img.bmap")  # found by the uncompressed name
    for offset, length in DATA:
        assert read(node, offset, length) == raw[offset : offset + length]


def test_compressed_image_without_bmap_writes_everything(
    image: Path, loop: tuple[str, Path], tmp_path: Path
) -> None:
    node, _ = loop
    packed = tmp_path / "plain.zst"
    packed.write_bytes(zstandard.ZstdCompressor().compress(image.read_bytes()))
    result = fleet("flash", str(packed), "-d", node, "--yes", "--no-bmap", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["bytes_written"] == 64 * MiB
    assert read(node, 0, 64 * MiB) == image.read_bytes()


def test_verify_catches_a_corrupted_range(image: Path, loop: tuple[str, Path]) -> None:
    node, backing = loop
    assert fleet("flash", str(image), "-d", node, "--yes").returncode == 0
    expected = expectations(load_bmap(image.with_name("disk.img.bmap")))
    verify_device(Path(node), expected)  # a good flash reads back clean
    # Flip bytes underneath the loop device: its own page cache still holds the good
    # bytes, so only a read that bypasses that cache can see the damage.
    with open(backing, "r+b") as handle:
        handle.seek(5 * MiB + 4096 + 100)
        handle.write(b"\x00\x01\x02\x03")
    bad = check_device(Path(node), expected)
    assert [(b.start, b.end) for b in bad] == [(5 * MiB + 4096, 8 * MiB + 4096)]
    with pytest.raises(FlashError, match="verification failed: 1 range"):
        verify_device(Path(node), expected)


def test_image_not_matching_its_bmap_is_reported(
    image: Path, loop: tuple[str, Path], tmp_path: Path
) -> None:
    node, _ = loop
    with open(image, "r+b") as handle:  # damage the image after its bmap was made
        handle.seek(40 * MiB)
        handle.write(b"\xff" * 16)
    result = fleet("flash", str(image), "-d", node, "--yes")
    assert result.returncode == 6
    assert "do not match its bmap" in result.stderr
    assert "partial image" in result.stderr


def test_refuses_mounted_target_unless_unmount(
    image: Path, loop: tuple[str, Path], tmp_path: Path
) -> None:
    node, _ = loop
    subprocess.run(["mkfs.ext4", "-q", "-F", node], check=True)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", node, str(mnt)], check=True)
    try:
        result = fleet("flash", str(image), "-d", node, "--yes")
        assert result.returncode == 6
        assert f"{node} is mounted" in result.stderr and "--unmount" in result.stderr
        assert f"{node} was not changed" in result.stderr
        result = fleet("flash", str(image), "-d", node, "--yes", "--unmount")
        assert result.returncode == 0, result.stderr
        assert not os.path.ismount(mnt)
    finally:
        subprocess.run(["umount", str(mnt)], check=False, capture_output=True)


def test_refuses_too_small_target(image: Path, loop_factory: object) -> None:
    node, _ = loop_factory(32 * MiB)  # type: ignore[operator]
    result = fleet("flash", str(image), "-d", node, "--yes")
    assert result.returncode == 6
    assert "too small" in result.stderr and "was not changed" in result.stderr
    assert read(node, 0, 4096) == b"\xa5" * 4096


def test_refuses_to_ask_without_a_terminal(image: Path, loop: tuple[str, Path]) -> None:
    node, _ = loop
    result = fleet("flash", str(image), "-d", node)
    assert result.returncode == 6
    assert "pass --yes" in result.stderr
    assert read(node, 0, 4096) == b"\xa5" * 4096


def test_progress_shows_bytes_rate_and_time_left_on_a_terminal(
    image: Path, loop: tuple[str, Path]
) -> None:
    node, _ = loop
    code, screen, _ = run_on_terminal(["flash", str(image), "-d", node, "--yes"])
    assert code == 0, screen
    assert "writing" in screen and "verifying" in screen, screen
    assert re.search(r"[0-9.]+/[0-9.]+ [KM]iB", screen), screen  # bytes done / total
    assert re.search(r"[0-9.]+ [kMG]B/s", screen), screen  # rate
    assert re.search(r"\d:\d\d:\d\d", screen), screen  # time left
    # without a terminal (a script), nothing but the result: no progress bar noise
    quiet = fleet("flash", str(image), "-d", node, "--yes")
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr


def test_ctrl_c_says_what_state_the_device_is_in(tmp_path: Path, loop_factory: object) -> None:
    node, _ = loop_factory(1024 * MiB, fill=None)  # type: ignore[operator]
    big = tmp_path / "big.img"
    with open(big, "wb") as handle:
        handle.truncate(1024 * MiB)
    code, screen, _ = run_on_terminal(
        ["flash", str(big), "-d", node, "--yes", "--no-bmap"],
        interrupt_on=r"writing.*[1-9][0-9.]*/1\.0 GiB",  # once some bytes are on the device
    )
    assert code == 6, screen
    assert re.search(
        rf"fleet: error: interrupted; {node} holds a partial image \(\d+ bytes written\) "
        "and will not boot: flash it again",
        screen.replace("\r", "").replace("\n", " "),
    ), screen
    # nothing is left holding the device: it can be flashed again at once
    again = fleet("flash", str(big), "-d", node, "--yes", "--json", "--no-verify")
    assert again.returncode == 0, again.stderr


def test_partition_is_refused(image: Path) -> None:
    result = fleet("flash", str(image), "-d", "/dev/null", "--yes")
    assert result.returncode == 6
    assert "not a block device" in result.stderr


def test_bmap_of_image_is_reproducible(image: Path, tmp_path: Path) -> None:
    write_bmap(image, tmp_path / "again.bmap")
    assert (tmp_path / "again.bmap").read_bytes() == image.with_name("disk.img.bmap").read_bytes()
    assert create_bmap(image).mapped_bytes == sum(length for _, length in DATA)


@pytest.mark.parametrize("how", ["bmap", "no-bmap", "gz-stream"])
def test_image_ending_inside_a_sector(loop: tuple[str, Path], tmp_path: Path, how: str) -> None:
    """Writes bypass the page cache in whole sectors; an image whose size is not a whole
    number of sectors still lands byte for byte, and the bytes after it stay as they were."""
    node, _ = loop
    size = 40 * MiB + 8192 + 100
    img = tmp_path / "odd.img"
    with open(img, "wb") as handle:  # data at the start and right up to the last byte
        handle.truncate(size)
        handle.write(os.urandom(3 * MiB))
        handle.seek(40 * MiB)
        handle.write(os.urandom(8192 + 100))
    args = ["--no-bmap"] if how == "no-bmap" else []
    if how == "bmap":
        write_bmap(img, tmp_path / "odd.img.bmap")
    if how == "gz-stream":  # a gzip stream does not tell its size up front
        img = tmp_path / "odd.gz"
        img.write_bytes(gzip.compress((tmp_path / "odd.img").read_bytes(), 1))
    result = fleet("flash", str(img), "-d", node, "--yes", "--json", *args)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["verified"] is True
    data = (tmp_path / "odd.img").read_bytes()
    if how == "bmap":  # only the data was written; the hole keeps the old bytes
        assert read(node, 0, 3 * MiB) == data[: 3 * MiB]
        assert read(node, 40 * MiB, size - 40 * MiB) == data[40 * MiB :]
    else:
        assert read(node, 0, size) == data
    assert read(node, size, 412) == b"\xa5" * 412


def test_corrupt_compressed_image_is_blamed_on_the_image(
    image: Path, loop: tuple[str, Path], tmp_path: Path
) -> None:
    """The read-back, checked against the bmap, also catches an image that does not
    match its bmap; the message then names the image, not the device."""
    node, _ = loop
    data = bytearray(image.read_bytes())
    data[5 * MiB + 4096 + 10] ^= 0xFF
    packed = tmp_path / "disk.img.zst"
    packed.write_bytes(zstandard.ZstdCompressor().compress(bytes(data)))
    result = fleet("flash", str(packed), "-d", node, "--yes")
    assert result.returncode == 6
    assert f"bytes {5 * MiB + 4096}-{8 * MiB + 4096} do not match its bmap" in result.stderr
    assert "partial image" in result.stderr


def test_file_names_with_markup_are_printed_as_they_are(
    image: Path, loop: tuple[str, Path]
) -> None:
    node, _ = loop
    odd = image.rename(image.with_name("disk[bold]:smile:.img"))  # a name cannot hold '/'
    odd.with_name(odd.name + ".bmap").write_bytes(image.with_name("disk.img.bmap").read_bytes())
    result = fleet("flash", str(odd), "-d", node, "--yes")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"flashed {odd.name} to {node} using {odd.name}.bmap: "), (
        result.stdout
    )
