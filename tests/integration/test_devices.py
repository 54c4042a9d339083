"""Discovery on this very machine: the root filesystem's disk is a system drive and is
never offered; loop devices are never offered; --wait sees a device appear."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fleet.errors import FlashError
from fleet.flash.discovery import BlockDevice, device_info, list_block_devices
from fleet.flash.safety import check_target
from fleet.flash.wait import wait_for_device

pytestmark = pytest.mark.integration

FLEET = str(Path(sys.executable).parent / "fleet")


def root_disk() -> str:
    """The whole disk under /, found independently of fleet: findmnt + lsblk."""
    source = subprocess.run(
        ["findmnt", "-n", "-o", "SOURCE", "/"], check=True, capture_output=True, text=True
    ).stdout.strip()
    parent = subprocess.run(
        ["lsblk", "-n", "-s", "-o", "NAME,TYPE", "-r", source],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split("\n")
    disks = [line.split()[0] for line in parent if line.endswith(" disk")]
    return disks[0]


def test_root_disk_is_system_and_not_offered() -> None:
    name = root_disk()
    found = {d.name: d for d in list_block_devices()}
    root = found[name]
    assert root.system and not root.offered
    assert "root filesystem" in (root.system_reason or "")
    shown = json.loads(
        subprocess.run(
            [FLEET, "devices", "--json"], capture_output=True, text=True, check=True
        ).stdout
    )
    assert name not in [d["name"] for d in shown["disks"]]
    everything = json.loads(
        subprocess.run(
            [FLEET, "devices", "--all", "--json"], capture_output=True, text=True, check=True
        ).stdout
    )
    listed = {d["name"]: d for d in everything["disks"]}
    assert listed[name]["system"] is True and listed[name]["offered"] is False


def test_root_disk_is_refused_as_a_target() -> None:
    device = device_info(f"/dev/{root_disk()}")
    with pytest.raises(FlashError, match="system drive"):
        check_target(device, 4096, allow_system=False, unmount=False)


def test_boot_rom_list_is_empty_without_usb_and_devices_still_works() -> None:
    shown = subprocess.run([FLEET, "devices", "--json"], capture_output=True, text=True)
    assert shown.returncode == 0
    assert json.loads(shown.stdout)["usb_boot"] == []


@pytest.fixture
def backing(tmp_path: Path) -> Path:
    path = tmp_path / "card.img"
    with open(path, "wb") as handle:
        handle.truncate(16 * 1024 * 1024)
    return path


def test_loop_devices_are_never_offered(backing: Path) -> None:
    node = subprocess.run(
        ["losetup", "--find", "--show", str(backing)], check=True, capture_output=True, text=True
    ).stdout.strip()
    try:
        loop = device_info(node)
        assert loop.kind == "loop" and not loop.offered and loop.size == 16 * 1024 * 1024
        shown = subprocess.run(
            [FLEET, "devices", "--all", "--json"], capture_output=True, text=True, check=True
        ).stdout
        assert node not in [d["node"] for d in json.loads(shown)["disks"]]
    finally:
        subprocess.run(["losetup", "-d", node], check=False)


def test_wait_sees_a_device_that_appears(backing: Path) -> None:
    attached: list[str] = []

    def attach() -> None:  # runs once the udev/kernel monitor is listening
        out = subprocess.run(
            ["losetup", "--find", "--show", str(backing)],
            check=True,
            capture_output=True,
            text=True,
        )
        attached.append(out.stdout.strip())

    def ours(device: BlockDevice) -> bool:
        # the real predicate refuses loop devices; this one accepts only ours
        return bool(attached) and device.node == attached[0]

    try:
        found = wait_for_device(ours, timeout=30, on_listening=attach)
        assert found.node == attached[0]
        assert found.size == os.path.getsize(backing)
    finally:
        for node in attached:
            subprocess.run(["losetup", "-d", node], check=False)


def test_wait_gives_up_at_its_timeout() -> None:
    with pytest.raises(FlashError, match=r"no new matching device appeared within 0\.3 s"):
        wait_for_device(lambda d: False, timeout=0.3)
