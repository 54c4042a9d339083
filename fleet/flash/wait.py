"""Wait for a new block device to appear (a card pushed in, a board plugged in).

The udev monitor is read through pyudev; without udevd (containers, minimal hosts)
the kernel's own uevents are read instead. Which devices count is a predicate the
caller passes: the real one refuses everything that is not offered as a flash target.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pyudev

from fleet.errors import FlashError
from fleet.flash.discovery import BlockDevice, from_udev, list_block_devices

Predicate = Callable[[BlockDevice], bool]


def default_predicate(device: BlockDevice) -> bool:
    return device.offered


def disk_monitor(context: pyudev.Context) -> pyudev.Monitor:
    source = "udev" if Path("/run/udev/control").exists() else "kernel"
    monitor = pyudev.Monitor.from_netlink(context, source=source)
    monitor.filter_by("block", device_type="disk")
    return monitor


def wait_for_device(
    predicate: Predicate = default_predicate,
    timeout: float | None = None,
    on_listening: Callable[[], None] | None = None,
    context: pyudev.Context | None = None,
) -> BlockDevice:
    """Return the first device that appears (or gets a medium) after the call and
    satisfies ``predicate``. ``on_listening`` runs once the monitor is live."""
    return next(new_devices(predicate, timeout, on_listening, context))


def new_devices(
    predicate: Predicate = default_predicate,
    timeout: float | None = None,
    on_listening: Callable[[], None] | None = None,
    context: pyudev.Context | None = None,
) -> Iterator[BlockDevice]:
    """Each device that appears (or gets a medium) and satisfies ``predicate``, in the
    order they come, from one monitor, so none that comes between two is missed.
    ``timeout`` bounds the wait for each next one (FlashError when it passes)."""
    context = context or pyudev.Context()
    monitor = disk_monitor(context)
    monitor.start()
    # Devices already there do not count, only new ones or ones that got a medium.
    present = {d.node for d in list_block_devices(context) if predicate(d)}
    if on_listening is not None:
        on_listening()
    while True:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise FlashError(f"no new matching device appeared within {timeout:g} s")
            event = monitor.poll(timeout=min(left, 1.0) if left is not None else 1.0)
            if event is None:
                continue
            if event.action == "remove":  # pulled out: the next card there is new again
                present.discard(event.device_node or "")
                continue
            if event.action not in ("add", "change"):
                continue
            try:
                # Re-read from sysfs: kernel events carry no udev properties or attributes.
                device = from_udev(pyudev.Devices.from_sys_path(context, event.sys_path))
            except pyudev.DeviceNotFoundError:
                continue
            if device.size == 0:  # a card taken out of its reader: the next one is new
                present.discard(device.node)
                continue
            if device.node not in present and predicate(device):
                present.add(device.node)
                break
        yield device
