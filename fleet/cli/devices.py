"""``fleet devices``: the disks a board or SD card could be, and boards in USB boot mode."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Annotated

import typer

from fleet.cli.output import JSON_HELP, note, out, print_json
from fleet.flash import rpiboot
from fleet.flash.discovery import BlockDevice, human_size, list_block_devices


def _flags(d: BlockDevice) -> str:
    flags = []
    if d.removable:
        flags.append("removable")
    if d.hotplug:
        flags.append("hotplug")
    if d.rpi_msd:
        flags.append("raspberry-pi")
    if d.system:
        flags.append(f"SYSTEM: {d.system_reason}")
    for node, targets in d.mounts.items():
        flags.append(f"{node} on {','.join(targets)}")
    return "; ".join(flags)


def devices(
    show_all: Annotated[
        bool, typer.Option("--all", help="Also show system drives (the host's own disks).")
    ] = False,
    watch: Annotated[
        bool,
        typer.Option(
            "--watch",
            "-w",
            help="Keep watching: show cards and boot-ROM boards as they arrive and leave "
            "(Ctrl-C stops; with --json, one JSON object per line).",
        ),
    ] = False,
    timeout: Annotated[
        float | None, typer.Option("--timeout", help="With --watch: stop after this many seconds.")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """List the devices `fleet flash` can write: USB and SD-card disks (bus, vendor and
    model, serial, size, removable/hotplug, mounted partitions, whether it is a Raspberry
    Pi in USB mass-storage mode) and Raspberry Pi boards waiting in USB boot-ROM mode.

    System drives are hidden unless --all; loop, RAM and optical devices never appear.
    With --watch, what is there is shown, then '+' and '-' lines as devices come and go.
    """
    if watch:
        _watch(show_all, timeout, json_out)
        return
    disks = [
        d
        for d in list_block_devices()
        if d.kind == "disk" and d.size > 0 and (d.offered or (show_all and d.system))
    ]
    boards = rpiboot.list_boards()
    if json_out:
        print_json(
            {"disks": [d.as_dict() for d in disks], "usb_boot": [b.as_dict() for b in boards]}
        )
        return
    if not disks and not boards:
        out.print("no flashable devices (plug in a card or a board; --all shows system drives)")
    for d in disks:
        label = " ".join(p for p in (d.vendor, d.model) if p) or "-"
        out.print(
            f"{d.node:<14} {human_size(d.size):>10}  {d.bus or '-':<7} {label:<28} "
            f"{d.serial or '-':<18} {_flags(d)}"
        )
    for b in boards:
        out.print(
            f"usb:{b.path:<10} {'':>10}  usb     Raspberry Pi in USB boot mode "
            f"({b.as_dict()['usb_id']}, {b.stage}) {b.serial or '-'}"
        )


def _shown(show_all: bool) -> Callable[[BlockDevice], bool]:
    return lambda d: d.kind == "disk" and (d.offered or (show_all and d.system))


def _watch(show_all: bool, timeout: float | None, json_out: bool) -> None:
    from fleet.flash.watch import events

    until = None if timeout is None else time.monotonic() + timeout
    if not json_out:
        note("watching for cards and boards (Ctrl-C to stop)...")
    try:
        for event in events(_shown(show_all), until=until):
            if json_out:
                sys.stdout.write(json.dumps(event.as_dict(), sort_keys=True) + "\n")
                sys.stdout.flush()
                continue
            mark = {"present": " ", "arrived": "+", "left": "-"}[event.action]
            out.print(f"{mark} {time.strftime('%H:%M:%S')} {event.name:<14} {event.line}")
    except KeyboardInterrupt:
        return
