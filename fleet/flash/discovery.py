"""Which block devices could be a board or an SD card, and which must never be touched.

Facts come from pyudev: udev's properties when udevd runs, else sysfs attributes read
through the same device objects (containers and minimal hosts often have no udevd).
A disk is a *system* drive when it carries a system mount point or swap, anywhere in
its stack (partitions, device-mapper or md holders), or when it is neither removable
nor hot-pluggable, or an mmc disk (eMMC, the host's own SD card) the kernel does not
call removable. Loop, ram, optical and other virtual devices are never offered.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyudev

from fleet.errors import FlashError

# Mount points that make their disk the host's own.
SYSTEM_MOUNTS = ("/", "/boot", "/boot/efi", "/boot/firmware", "/usr", "/var", "/home", "/etc")
HOTPLUG_BUSES = ("usb", "mmc", "ieee1394", "memstick")
_BUS_ORDER = ("usb", "mmc", "ieee1394", "memstick", "nvme", "virtio", "ata", "scsi")
# Raspberry Pi vendor ids: Broadcom (boot ROM, legacy msd firmware), Raspberry Pi Ltd.
RPI_USB_VENDORS = ("0a5c", "2e8a")


@dataclass(frozen=True)
class BlockDevice:
    name: str  # kernel name, e.g. sdb
    node: str  # /dev/sdb
    devnum: str  # "8:16"
    kind: str  # disk, loop, ram, optical, virtual
    size: int
    bus: str
    vendor: str
    model: str
    serial: str
    removable: bool
    hotplug: bool
    read_only: bool
    mounts: dict[str, list[str]] = field(default_factory=dict)  # node -> mount points
    swap: tuple[str, ...] = ()
    system_reason: str | None = None  # why this is the host's own drive
    rpi_msd: bool = False  # a Raspberry Pi exposing its storage over USB
    usb_port: str = ""  # the USB device's path (e.g. 1-1.3), as rpiboot names boards

    @property
    def system(self) -> bool:
        return self.system_reason is not None

    @property
    def offered(self) -> bool:
        """Whether fleet proposes this device as a flash target."""
        return self.kind == "disk" and not self.system and self.size > 0

    @property
    def mounted(self) -> bool:
        return bool(self.mounts) or bool(self.swap)

    def describe(self) -> str:
        label = " ".join(p for p in (self.vendor, self.model) if p) or "unknown device"
        return f"{self.node} ({label}, {human_size(self.size)}, {self.bus or 'unknown bus'})"

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "node": self.node,
            "kind": self.kind,
            "size": self.size,
            "bus": self.bus,
            "vendor": self.vendor,
            "model": self.model,
            "serial": self.serial,
            "removable": self.removable,
            "hotplug": self.hotplug,
            "read_only": self.read_only,
            "mounts": self.mounts,
            "swap": list(self.swap),
            "system": self.system,
            "system_reason": self.system_reason,
            "offered": self.offered,
            "rpi_msd": self.rpi_msd,
            "usb_port": self.usb_port or None,
        }


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


# ----------------------------------------------------------------------- host facts


@dataclass(frozen=True)
class Mount:
    devnum: str
    source: str
    target: str


def read_mounts(path: Path = Path("/proc/self/mountinfo")) -> list[Mount]:
    mounts = []
    for line in path.read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields = left.split()
        source = right.split()[1] if len(right.split()) > 1 else ""
        target = fields[4].encode().decode("unicode_escape")
        mounts.append(Mount(fields[2], source, target))
    return mounts


def _devnum_of(path: str) -> str | None:
    try:
        rdev = os.stat(path).st_rdev
    except OSError:
        return None
    return f"{os.major(rdev)}:{os.minor(rdev)}" if rdev else None


def _swap_devnums() -> dict[str, str]:
    found: dict[str, str] = {}
    try:
        lines = Path("/proc/swaps").read_text().splitlines()[1:]
    except OSError:
        return found
    for line in lines:
        name = line.split()[0].encode().decode("unicode_escape")
        devnum = _devnum_of(name)
        if devnum:
            found[devnum] = name
    return found


def _stack(sys_path: Path) -> list[Path]:
    """The device, its partitions, and everything built on them (dm, md), as sysfs paths."""
    seen: list[Path] = []
    todo = [sys_path]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.append(path)
        for child in path.iterdir() if path.is_dir() else []:
            if (child / "partition").exists():
                todo.append(child)
        holders = path / "holders"
        if holders.is_dir():
            todo.extend(h.resolve() for h in holders.iterdir())
    return seen


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


# ---------------------------------------------------------------------------- probing


def _kind(device: pyudev.Device) -> str:
    name = device.sys_name
    major = int(device.properties.get("MAJOR", "0"))
    if name.startswith("loop") or major == 7:
        return "loop"
    if name.startswith(("ram", "zram")) or major == 1:
        return "ram"
    if name.startswith("sr") or major == 11 or device.properties.get("ID_CDROM") == "1":
        return "optical"
    if name.startswith(("dm-", "md", "nbd", "zd", "drbd")) or "/virtual/" in device.sys_path:
        return "virtual"
    return "disk"


def _bus(device: pyudev.Device) -> str:
    bus = device.properties.get("ID_BUS", "")
    subsystems = [a.subsystem for a in device.ancestors if a.subsystem]
    if bus == "ata" or not bus:
        for candidate in _BUS_ORDER:
            if candidate in subsystems:
                return candidate
    return str(bus)


def _usb_parent(device: pyudev.Device) -> pyudev.Device | None:
    for ancestor in device.ancestors:
        if ancestor.subsystem == "usb" and ancestor.device_type == "usb_device":
            return ancestor
    return None


def _attr(device: pyudev.Device | None, name: str) -> str:
    if device is None:
        return ""
    value = device.attributes.get(name)
    return value.decode(errors="replace").strip() if isinstance(value, bytes) else ""


def probe(
    device: pyudev.Device,
    mounts: Iterable[Mount] | None = None,
    swaps: dict[str, str] | None = None,
    root_holders: set[str] | None = None,
) -> BlockDevice:
    """Everything fleet needs to know about one whole-disk block device."""
    mount_list = list(read_mounts() if mounts is None else mounts)
    swaps = _swap_devnums() if swaps is None else swaps
    sys_path = Path(device.sys_path)
    parent = device.parent
    usb = _usb_parent(device)
    props = device.properties
    vendor = _attr(parent, "vendor") if parent is not None else ""
    if vendor.startswith("0x"):  # a PCI/virtio vendor id, not a name
        vendor = ""
    vendor = vendor or props.get("ID_VENDOR", "").replace("_", " ") or _attr(usb, "manufacturer")
    model = _attr(parent, "model") or _attr(parent, "name")
    model = model or props.get("ID_MODEL", "").replace("_", " ") or _attr(usb, "product")
    serial = props.get("ID_SERIAL_SHORT", "") or _attr(usb, "serial")
    serial = serial or _attr(parent, "serial") or _attr(parent, "wwid")
    bus = _bus(device)
    removable = _attr(device, "removable") == "1"
    hotplug = bus in HOTPLUG_BUSES
    size = int(_attr(device, "size") or 0) * 512

    mounted: dict[str, list[str]] = {}
    swapping: list[str] = []
    stack_nums: dict[str, str] = {}
    for path in _stack(sys_path):
        num = _read(path / "dev")
        if num:
            stack_nums[num] = f"/dev/{path.name}"
    for m in mount_list:
        node = stack_nums.get(m.devnum)
        if node is None and m.source.startswith("/dev/"):
            node = stack_nums.get(_devnum_of(m.source) or "")
        if node is not None:
            mounted.setdefault(node, []).append(m.target)
    for num, name in swaps.items():
        if num in stack_nums:
            swapping.append(name)

    reason = None
    system_targets = sorted(
        t for targets in mounted.values() for t in targets if t in SYSTEM_MOUNTS
    )
    if root_holders and any(num in root_holders for num in stack_nums):
        reason = "holds the root filesystem"
    elif system_targets:
        reason = f"holds {', '.join(system_targets)}"
    elif swapping:
        reason = "holds active swap"
    elif _kind(device) == "disk" and not removable and not hotplug:
        reason = "internal (not removable, not hot-pluggable)"
    elif _kind(device) == "disk" and not removable and bus == "mmc":
        # The mmc bus is hot-pluggable, but a disk on it that the kernel does not call
        # removable may be soldered on (eMMC) or the host's own card: never a candidate.
        reason = "internal MMC/SD storage (not removable)"

    vendor_id = _attr(usb, "idVendor").lower()
    rpi_msd = vendor.upper().startswith("RPI-MSD") or (
        usb is not None
        and (
            vendor_id in RPI_USB_VENDORS
            or "raspberry" in (_attr(usb, "manufacturer") + _attr(usb, "product")).lower()
        )
    )
    return BlockDevice(
        name=device.sys_name,
        node=device.device_node or f"/dev/{device.sys_name}",
        devnum=props.get("MAJOR", "0") + ":" + props.get("MINOR", "0"),
        kind=_kind(device),
        size=size,
        bus=bus,
        vendor=vendor,
        model=model,
        serial=serial,
        removable=removable,
        hotplug=hotplug,
        read_only=_attr(device, "ro") == "1",
        mounts=mounted,
        swap=tuple(swapping),
        system_reason=reason,
        rpi_msd=rpi_msd,
        usb_port=usb.sys_name if usb is not None else "",
    )


def root_devnums(mounts: Iterable[Mount]) -> set[str]:
    """Device numbers of the whole disks that hold the root filesystem, through
    partitions and device-mapper/md layers (their 'slaves')."""
    found: set[str] = set()
    for m in mounts:
        if m.target != "/":
            continue
        nums = {m.devnum}
        if m.source.startswith("/dev/"):
            nums.add(_devnum_of(m.source) or m.devnum)
        for num in nums:
            found |= _lower_disks(Path("/sys/dev/block") / num)
    return found


def _lower_disks(link: Path) -> set[str]:
    if not link.exists():
        return set()
    path = link.resolve()
    found = {_read(path / "dev")}
    if (path / "partition").exists():
        found.add(_read(path.parent / "dev"))
    slaves = path / "slaves"
    if slaves.is_dir():
        for slave in slaves.iterdir():
            found |= _lower_disks(slave)
    return {n for n in found if n}


def list_block_devices(context: pyudev.Context | None = None) -> list[BlockDevice]:
    """Every whole-disk block device of the host, classified; the caller filters."""
    context = context or pyudev.Context()
    mounts = read_mounts()
    swaps = _swap_devnums()
    roots = root_devnums(mounts)
    devices = [
        probe(d, mounts, swaps, roots)
        for d in context.list_devices(subsystem="block", DEVTYPE="disk")
    ]
    return sorted(devices, key=lambda d: d.name)


def device_info(node: str | Path, context: pyudev.Context | None = None) -> BlockDevice:
    """The classified BlockDevice for a device node such as /dev/sdb."""
    context = context or pyudev.Context()
    try:
        device = pyudev.Devices.from_device_file(context, str(node))
    except (pyudev.DeviceNotFoundError, ValueError, OSError) as exc:
        raise FlashError(f"{node} is not a block device") from exc
    if device.subsystem != "block":
        raise FlashError(f"{node} is not a block device")
    if device.device_type == "partition":
        disk = device.find_parent("block", "disk")
        whole = disk.device_node if disk is not None else "its disk"
        raise FlashError(f"{node} is a partition; give the whole disk ({whole})")
    mounts = read_mounts()
    return probe(device, mounts, _swap_devnums(), root_devnums(mounts))


def from_udev(device: pyudev.Device) -> BlockDevice:
    mounts = read_mounts()
    return probe(device, mounts, _swap_devnums(), root_devnums(mounts))
