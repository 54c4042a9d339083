"""A stand-in for udev's device list, the one edge no machine here has: disks as udev
and sysfs describe them (a USB card reader, an eMMC or SD card on the mmc bus, a SATA
disk), each with its own small sysfs folder. fleet's real classification
(``fleet.flash.discovery.probe``) and the commands' own code run against them; only
the list of devices and the lookup of a node come from here."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import fleet.cli.devices as devices_cli
import fleet.cli.flash as flash_cli
from fleet.errors import FlashError
from fleet.flash import discovery

GiB = 1024**3


@dataclass
class Device:
    """The attributes of a pyudev.Device that fleet reads."""

    sys_name: str
    sys_path: str
    subsystem: str
    device_type: str | None = None
    properties: dict[str, str] = field(default_factory=dict)
    attributes: dict[str, bytes] = field(default_factory=dict)
    parent: Device | None = None
    device_node: str | None = None

    @property
    def ancestors(self) -> Iterator[Device]:
        up = self.parent
        while up is not None:
            yield up
            up = up.parent


class Udev:
    """A udev context holding the disks a test adds."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.disks: list[Device] = []

    def list_devices(self, **_: Any) -> list[Device]:
        return list(self.disks)

    def _disk(
        self, name: str, major: int, minor: int, parent: Device, removable: bool, size: int,
        props: dict[str, str],
    ) -> Device:
        folder = self.root / "sys" / "block" / name
        folder.mkdir(parents=True)
        (folder / "dev").write_text(f"{major}:{minor}\n")
        disk = Device(
            sys_name=name, sys_path=str(folder), subsystem="block", device_type="disk",
            properties={"MAJOR": str(major), "MINOR": str(minor), **props},
            attributes={"removable": b"1" if removable else b"0", "ro": b"0",
                        "size": str(size // 512).encode()},
            parent=parent, device_node=f"/dev/{name}",
        )
        self.disks.append(disk)
        return disk

    def usb_reader(self, name: str, vendor: str = "Generic", model: str = "SD Reader",
                   serial: str = "A1", removable: bool = True, size: int = 32 * GiB) -> Device:
        usb = Device("1-1", "/sys/devices/usb1/1-1", "usb", "usb_device", attributes={
            "idVendor": b"0bda", "manufacturer": b"Generic", "product": b"Card Reader",
            "serial": serial.encode()})
        scsi = Device("0:0:0:0", "/sys/devices/usb1/1-1/host0/0:0:0:0", "scsi",
                      attributes={"vendor": vendor.encode(), "model": model.encode()},
                      parent=usb)
        minor = 16 * len(self.disks)
        return self._disk(name, 8, minor, scsi, removable, size,
                          {"ID_BUS": "usb", "ID_SERIAL_SHORT": serial})

    def mmc(self, name: str = "mmcblk0", kind: str = "MMC", model: str = "SE32G",
            size: int = 32 * GiB) -> Device:
        """A card on the mmc bus; the kernel reports every one of them not removable."""
        host = Device("mmc0", "/sys/devices/platform/mmc0", "mmc_host")
        card = Device("mmc0:0001", "/sys/devices/platform/mmc0/mmc0:0001", "mmc",
                      attributes={"name": model.encode(), "serial": b"0x0badcafe",
                                  "type": kind.encode()}, parent=host)
        return self._disk(name, 179, 8 * len(self.disks), card, False, size, {})

    def sata(self, name: str, vendor: str = "ATA", model: str = "Disk",
             size: int = 256 * GiB) -> Device:
        ata = Device("ata1", "/sys/devices/pci0000:00/ata1", "ata")
        scsi = Device("1:0:0:0", "/sys/devices/pci0000:00/ata1/host1/1:0:0:0", "scsi",
                      attributes={"vendor": vendor.encode(), "model": model.encode()},
                      parent=ata)
        return self._disk(name, 8, 16 * len(self.disks), scsi, False, size, {"ID_BUS": "ata"})

    def info(self, node: str) -> discovery.BlockDevice:
        for disk in self.disks:
            if disk.device_node == node:
                return discovery.from_udev(disk)  # type: ignore[arg-type]
        raise FlashError(f"{node} is not a block device")


@pytest.fixture
def udev(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Udev:
    """The commands see only the stand-in's disks, classified by fleet's own code."""
    standin = Udev(tmp_path / "udev")

    def listed() -> list[discovery.BlockDevice]:
        return discovery.list_block_devices(standin)  # type: ignore[arg-type]

    monkeypatch.setattr(flash_cli, "list_block_devices", listed)
    monkeypatch.setattr(devices_cli, "list_block_devices", listed)
    monkeypatch.setattr(flash_cli, "device_info", standin.info)
    return standin
