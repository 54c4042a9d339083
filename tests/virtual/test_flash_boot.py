"""A board flashed by ``fleet flash`` boots (issue 5 item 4): the built disk image is
flashed onto a loop device, a real block device, and a virtual board boots from that
block device itself, not from a copy."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Built, fleet
from tests.virtual.test_boot import http_get, wait_for_console

pytestmark = pytest.mark.virtual

BOARD = "flash-boot"


@pytest.fixture
def loop_target(hello_virt: Built, tmp_path: Path) -> Iterator[str]:
    """A sparse file, a little larger than the image, attached as a loop device. The
    finalizer stops the board before detaching, so QEMU never loses its disk."""
    backing = tmp_path / "card.img"
    with open(backing, "wb") as handle:
        handle.truncate(hello_virt.disk.stat().st_size + 64 * 1024 * 1024)
    node = subprocess.run(
        ["losetup", "--find", "--show", str(backing)], check=True, capture_output=True, text=True
    ).stdout.strip()
    try:
        yield node
    finally:
        fleet("lab", "down", BOARD, check=False)
        subprocess.run(["losetup", "-d", node], check=False)


def test_flashed_loop_device_boots_to_the_app(hello_virt: Built, loop_target: str) -> None:
    flashed = json.loads(
        fleet("flash", hello_virt.disk, "--device", loop_target, "--yes", "--json").stdout
    )
    assert flashed["device"] == loop_target
    assert flashed["verified"] is True
    assert flashed["bmap"] is not None  # fleet build's .bmap: only the data was written
    assert flashed["bytes_written"] < hello_virt.disk.stat().st_size

    up = json.loads(
        fleet(
            "lab",
            "up",
            "--board",
            "qemu-virt-arm64",
            "--disk",
            loop_target,
            "--in-place",
            "--name",
            BOARD,
            "--json",
        ).stdout
    )
    assert http_get(up["app_port"], "/version").strip() == "1.0.0"
    wait_for_console(Path(up["console_log"]), "fleet: app healthy", 60)
