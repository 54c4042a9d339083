"""``fleet lab up --in-place --disk DEV`` writes the board's settings into the device
itself, so it gets fleet flash's safety: the host's system drive and a device another
program holds are refused before anything is written (issue 10, item 9)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from provision_disks import held_by_another_program, make_disk, only_line, sha
from test_devices import root_disk

pytestmark = pytest.mark.integration

FLEET = str(Path(sys.executable).parent / "fleet")
BOARD = "in-place-refused"


def lab_up(disk: str) -> subprocess.CompletedProcess[str]:
    # A short timeout and --down-on-failure: should a refusal be missing, the test ends
    # fast and leaves no QEMU running.
    return subprocess.run(
        [FLEET, "lab", "up", "--board", "qemu-virt-arm64", "--disk", disk, "--in-place",
         "--name", BOARD, "--timeout", "3", "--no-ssh-wait", "--down-on-failure"],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120,
    )


@pytest.fixture
def card(tmp_path: Path) -> Iterator[str]:
    backing = make_disk(tmp_path / "card.img")
    node = subprocess.run(
        ["losetup", "--find", "--show", str(backing)], check=True, capture_output=True,
        text=True,
    ).stdout.strip()
    yield node
    subprocess.run([FLEET, "lab", "down", BOARD, "--rm"], check=False, capture_output=True)
    subprocess.run(["losetup", "-d", node], check=False)


def test_in_place_refuses_the_system_drive() -> None:
    root = f"/dev/{root_disk()}"
    result = lab_up(root)
    assert result.returncode == 6, result.stderr
    line = only_line(result.stderr)
    assert line.startswith(f"fleet: error: {root} is a system drive (holds the root filesystem)")
    assert f"{root} was not changed" in line


def test_in_place_refuses_a_device_held_by_another_program(card: str) -> None:
    before = sha(card)
    with held_by_another_program(card):
        result = lab_up(card)
    assert result.returncode == 6, result.stderr
    assert only_line(result.stderr) == (
        f"fleet: error: {card} is busy (mounted or held by another program); "
        f"{card} was not changed"
    )
    assert sha(card) == before
