"""Cards and boot-ROM boards arriving and leaving, as a stream of events, for
``fleet devices --watch``.

Disks come from the udev monitor (the kernel's uevents without udevd), so a card is
seen the moment it is pushed in; a card reader whose medium is taken out reports a
change to size 0, not a removal, and that counts as leaving. Boards in USB boot mode
have no block device: pyusb is asked for them every ``poll`` seconds and the answers
compared, which costs one libusb scan per poll and needs no USB hotplug support.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pyudev

from fleet.flash import rpiboot
from fleet.flash.discovery import BlockDevice, from_udev, list_block_devices
from fleet.flash.wait import disk_monitor

Predicate = Callable[[BlockDevice], bool]


@dataclass(frozen=True)
class Event:
    action: str  # "present" (there when watching began), "arrived" or "left"
    kind: str  # "disk" or "usb-boot"
    name: str  # /dev/sdb, or usb:1-1.3
    detail: dict[str, Any]
    line: str  # what a person reads

    def as_dict(self) -> dict[str, Any]:
        return {"event": self.action, "kind": self.kind, "target": self.name, **self.detail}


def _disk(action: str, d: BlockDevice) -> Event:
    return Event(action, "disk", d.node, d.as_dict(), d.describe())


def _board(action: str, b: rpiboot.BootRomBoard) -> Event:
    info = b.as_dict()
    line = f"Raspberry Pi in USB boot mode ({info['usb_id']}, {b.stage}) {b.serial or '-'}"
    return Event(action, "usb-boot", f"usb:{b.path}", info, line)


def _left(kind: str, name: str) -> Event:
    return Event("left", kind, name, {}, "gone")


def events(
    predicate: Predicate,
    finder: rpiboot.Finder = rpiboot.default_finder,
    *,
    poll: float = 0.5,
    until: float | None = None,
    context: pyudev.Context | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[Event]:
    """What is there now, then every arrival and departure, until ``until`` (a clock
    time) or for ever."""
    context = context or pyudev.Context()
    monitor = disk_monitor(context)
    monitor.start()
    disks = {d.node: d for d in list_block_devices(context) if d.size > 0 and predicate(d)}
    boards = {b.path + b.stage: b for b in rpiboot.list_boards(finder)}
    for d in disks.values():
        yield _disk("present", d)
    for b in boards.values():
        yield _board("present", b)
    next_scan = clock() + poll
    while until is None or clock() < until:
        event = monitor.poll(timeout=max(0.0, min(next_scan, until or next_scan) - clock()))
        if event is not None:
            yield from _disk_event(event, disks, predicate, context)
        if clock() < next_scan:  # a burst of disk events does not hold the boards back
            continue
        next_scan = clock() + poll
        now = {b.path + b.stage: b for b in rpiboot.list_boards(finder)}
        for key in sorted(boards.keys() - now.keys()):
            yield _left("usb-boot", f"usb:{boards.pop(key).path}")
        for key in sorted(now.keys() - boards.keys()):
            boards[key] = now[key]
            yield _board("arrived", now[key])


def _disk_event(
    event: pyudev.Device,
    disks: dict[str, BlockDevice],
    predicate: Predicate,
    context: pyudev.Context,
) -> Iterator[Event]:
    node = event.device_node or ""
    if event.action == "remove":
        if disks.pop(node, None) is not None:
            yield _left("disk", node)
        return
    if event.action not in ("add", "change"):
        return
    try:
        device = from_udev(pyudev.Devices.from_sys_path(context, event.sys_path))
    except pyudev.DeviceNotFoundError:  # gone again before it could be read
        if disks.pop(node, None) is not None:
            yield _left("disk", node)
        return
    if device.size == 0 or not predicate(device):  # medium taken out of its reader
        if disks.pop(device.node, None) is not None:
            yield _left("disk", device.node)
        return
    if device.node not in disks:
        disks[device.node] = device
        yield _disk("arrived", device)
