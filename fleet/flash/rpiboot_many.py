"""Boot-ROM boards one after another for ``fleet flash --rpiboot --count N``: each board
waiting in USB boot mode is booted into the mass-storage gadget, and its disk (the one
that appears on the same USB port) becomes the next target, carrying the serial the
boot ROM reported, which --settings files and {serial} hostnames are keyed by. The
next board is booted while the ones before it are still being written."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

from fleet.errors import FlashError
from fleet.flash import rpiboot
from fleet.flash.discovery import BlockDevice
from fleet.flash.many import Target
from fleet.flash.rpiboot_files import BootFiles
from fleet.flash.wait import wait_for_device

Waiter = Callable[..., BlockDevice]


def next_rom_board(
    finder: rpiboot.Finder,
    timeout: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> rpiboot.BootRomBoard:
    """The first board found still in its boot ROM (lowest USB path first)."""
    deadline = clock() + timeout
    while True:
        waiting = sorted(
            (b for b in rpiboot.list_boards(finder) if b.stage == "rom"), key=lambda b: b.path
        )
        if waiting:
            return waiting[0]
        if clock() >= deadline:
            raise FlashError(f"no board in USB boot mode appeared within {timeout:g} s")
        sleep(0.2)


def gadget_disk(
    files: BootFiles,
    board: rpiboot.BootRomBoard,
    timeout: float,
    log: Callable[[str], None],
    finder: rpiboot.Finder = rpiboot.default_finder,
    wait: Waiter = wait_for_device,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> BlockDevice:
    """Boot ``board`` and return the disk its gadget brings up on the same port. The
    disk monitor is listening before the first USB transfer, so a disk that comes up
    quickly is not missed."""

    def boot() -> None:
        served = rpiboot.boot(
            files,
            path=board.path,
            timeout=timeout,
            finder=finder,
            clock=clock,
            sleep=sleep,
            log=log,
        )
        log(
            f"board {board.serial or board.path} booted the mass-storage gadget "
            f"({len(served)} files); waiting for its disk"
        )

    def its_disk(d: BlockDevice) -> bool:
        return d.offered and d.rpi_msd and d.usb_port == board.path

    return wait(its_disk, timeout=timeout, on_listening=boot)


def booted_targets(
    folder: Path,
    count: int,
    *,
    timeout: float,
    log: Callable[[str], None],
    finder: rpiboot.Finder = rpiboot.default_finder,
    wait: Waiter = wait_for_device,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[Target]:
    files = BootFiles(folder)
    for n in range(1, count + 1):
        log(f"waiting for board {n} of {count} in USB boot mode...")
        board = next_rom_board(finder, timeout, clock, sleep)
        disk = gadget_disk(files, board, timeout, log, finder, wait, clock, sleep)
        yield Target(disk.node, n, board.serial)
