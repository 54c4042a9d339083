"""fleet devices --watch: real loop devices attached and detached while the udev
(or kernel) monitor listens, and boot-ROM boards coming and going at the pyusb edge."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from fleet.flash import rpiboot
from fleet.flash.discovery import BlockDevice
from fleet.flash.watch import Event, events

pytestmark = pytest.mark.integration

FLEET = str(Path(sys.executable).parent / "fleet")


class RomBoard:
    """The slice of a pyusb device that rpiboot.list_boards reads."""

    idVendor = rpiboot.VENDOR

    def __init__(self, ports: tuple[int, ...], serial: str, rom: bool = True) -> None:
        self.idProduct = 0x2711
        self.iSerialNumber = 0 if rom else 1
        self.bus = 1
        self.port_numbers = ports
        self.serial_number = serial


def test_cards_and_boards_arriving_and_leaving(tmp_path: Path) -> None:
    backing = tmp_path / "card.img"
    backing.write_bytes(b"\0" * (8 << 20))
    attached: list[str] = []
    usb: list[Any] = [RomBoard((1, 2), "aaaa1111")]  # there before watching begins
    seen: list[Event] = []

    def backed_here(device: BlockDevice) -> bool:
        # decided by the device alone: its event may come before losetup returns
        backing = Path(f"/sys/block/{device.name}/loop/backing_file")
        return backing.is_file() and backing.read_text().startswith(str(tmp_path))

    stream = events(
        backed_here,  # the real one refuses loop devices
        finder=lambda: list(usb),
        poll=0.1,
    )

    def step() -> None:
        attached.append(
            subprocess.run(
                ["losetup", "--find", "--show", str(backing)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout.strip()
        )

    try:
        for event in stream:
            seen.append(event)
            if len(seen) == 1:  # the board that was there; now a card and a second board come
                threading.Thread(target=step).start()
                usb.append(RomBoard((1, 4), "bbbb2222"))
            elif event.kind == "disk" and event.action == "arrived":
                subprocess.run(["losetup", "-d", event.name], check=True)
            elif event.kind == "disk" and event.action == "left":
                usb.pop(0)  # the first board is booted or unplugged
            if ("left", "usb-boot") in [(e.action, e.kind) for e in seen] and any(
                e.name == "usb:1-1.4" for e in seen
            ):
                break
            assert len(seen) < 20, seen
    finally:  # a failed run leaves no loop device behind
        for node in attached:
            subprocess.run(["losetup", "-d", node], capture_output=True, check=False)
    summary = [(e.action, e.kind, e.name) for e in seen]
    assert summary[0] == ("present", "usb-boot", "usb:1-1.2")
    assert ("arrived", "usb-boot", "usb:1-1.4") in summary
    card = attached[0]
    arrived = summary.index(("arrived", "disk", card))
    assert summary.index(("left", "disk", card)) > arrived
    assert ("left", "usb-boot", "usb:1-1.2") in summary
    shown = next(e for e in seen if e.name == card and e.action == "arrived")
    assert shown.detail["size"] == 8 << 20 and shown.as_dict()["target"] == card


def test_watch_from_the_command_line_stops_at_its_timeout() -> None:
    result = subprocess.run(
        [FLEET, "devices", "--watch", "--all", "--timeout", "1", "--json"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    # the host's own root disk is there from the start, shown as a system drive
    assert any(e["event"] == "present" and e["system"] is True for e in lines), lines
    assert all(e["kind"] in ("disk", "usb-boot") for e in lines)
