"""Our .bmap and bmaptool's are interchangeable: bmaptool copy takes ours, we take its."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from fleet.bmap import create_bmap, load_bmap, write_bmap

pytestmark = pytest.mark.integration

MiB = 1024 * 1024


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "disk.img"
    with open(path, "wb") as handle:
        handle.truncate(64 * MiB)
        for offset, length in ((0, 65536), (10 * MiB, 2 * MiB), (63 * MiB, 4096)):
            handle.seek(offset)
            handle.write(bytes(range(256)) * (length // 256))
    return path


def test_bmaptool_copy_accepts_our_bmap(image: Path, tmp_path: Path) -> None:
    write_bmap(image, tmp_path / "ours.bmap")
    target = tmp_path / "copy.img"
    result = subprocess.run(
        ["bmaptool", "copy", "--bmap", str(tmp_path / "ours.bmap"), str(image), str(target)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert target.read_bytes() == image.read_bytes()


def test_bmaptool_copy_catches_image_that_differs_from_our_bmap(
    image: Path, tmp_path: Path
) -> None:
    write_bmap(image, tmp_path / "ours.bmap")
    with open(image, "r+b") as handle:
        handle.seek(10 * MiB + 5)
        handle.write(b"\xff")
    result = subprocess.run(
        [
            "bmaptool",
            "copy",
            "--bmap",
            str(tmp_path / "ours.bmap"),
            str(image),
            str(tmp_path / "c"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "checksum mismatch" in result.stderr


def test_we_accept_bmaptool_create_output(image: Path, tmp_path: Path) -> None:
    theirs = tmp_path / "theirs.bmap"
    subprocess.run(["bmaptool", "create", "-o", str(theirs), str(image)], check=True)
    assert load_bmap(theirs) == create_bmap(image)
