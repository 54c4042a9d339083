"""Boot-ROM boards one after another (``fleet flash --rpiboot --count N``) against
simulated boards at the pyusb boundary: each board is booted only once the disk
monitor listens, its disk is the one on its own USB port, and its target carries the
serial its boot ROM reported."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from rpiboot_sim import FakeClock, SimBoard

from fleet.errors import FlashError
from fleet.flash import rpiboot, rpiboot_many
from fleet.flash.discovery import BlockDevice
from fleet.flash.many import Target
from fleet.flash.rpiboot_files import BootFiles

pytestmark = pytest.mark.unit

GADGET = [
    (rpiboot.GET_FILE_SIZE, "config.txt"),
    (rpiboot.READ_FILE, "config.txt"),
    (rpiboot.GET_FILE_SIZE, "start4.elf"),
    (rpiboot.READ_FILE, "start4.elf"),
    (rpiboot.DONE, ""),
]

DISK = BlockDevice(
    name="sda",
    node="/dev/sda",
    devnum="8:0",
    kind="disk",
    size=8 << 30,
    bus="usb",
    vendor="RPi-MSD-",
    model="0001",
    serial="",
    removable=True,
    hotplug=True,
    read_only=False,
    rpi_msd=True,
)


@pytest.fixture
def files(tmp_path: Path) -> BootFiles:
    folder = tmp_path / "mass-storage-gadget64"
    folder.mkdir()
    (folder / "bootcode4.bin").write_bytes(b"B4" * 1000)
    (folder / "config.txt").write_bytes(b"gadget=1\n")
    (folder / "start4.elf").write_bytes(b"\x7fELF" + b"s" * 100)
    return BootFiles(folder)


class Monitor:
    """A stand-in for wait_for_device: once ``on_listening`` has booted the board, the
    gadget disks of the boards that finished their file server show up, beside a disk
    that is not a Raspberry Pi; the first one the predicate takes is returned."""

    def __init__(self, boards: dict[str, SimBoard], clock: FakeClock) -> None:
        self.boards, self.clock = boards, clock
        self.booted_inside: list[list[str]] = []  # boards first touched inside on_listening
        self.offered: list[list[str]] = []

    def __call__(
        self,
        predicate: Callable[[BlockDevice], bool],
        *,
        timeout: float,
        on_listening: Callable[[], None],
    ) -> BlockDevice:
        untouched = [port for port, b in self.boards.items() if not b.touched]
        on_listening()
        self.booted_inside.append([port for port in untouched if self.boards[port].touched])
        disks = [replace(DISK, name="sdz", node="/dev/sdz", rpi_msd=False, usb_port="1-9")]
        for n, (port, board) in enumerate(self.boards.items()):
            if board.stage == "gone":  # served Done: the gadget's disk comes up
                letter = "abcdefgh"[n]
                disks.append(
                    replace(DISK, name=f"sd{letter}", node=f"/dev/sd{letter}", usb_port=port)
                )
        taken = [d for d in disks if predicate(d)]
        self.offered.append([d.node for d in taken])
        if not taken:
            raise FlashError("no disk came")
        return taken[0]


def rig(*boards: tuple[str, tuple[int, ...]]) -> tuple[dict[str, SimBoard], FakeClock]:
    clock = FakeClock()
    sims = {
        f"1-{'.'.join(map(str, ports))}": SimBoard(
            0x2711, list(GADGET), serial=serial, ports=ports, clock=clock
        )
        for serial, ports in boards
    }
    return sims, clock


def booting(
    files: BootFiles, sims: dict[str, SimBoard], clock: FakeClock, count: int, monitor: Monitor
) -> Iterator[Target]:
    return rpiboot_many.booted_targets(
        files.folder,
        count,
        timeout=30.0,
        log=lambda _m: None,
        finder=lambda: [d for b in sims.values() for d in b.enumerate()],
        wait=monitor,
        clock=clock,
        sleep=clock.sleep,
    )


def targets(
    files: BootFiles, sims: dict[str, SimBoard], clock: FakeClock, count: int, monitor: Monitor
) -> list[Target]:
    return list(booting(files, sims, clock, count, monitor))


def test_each_board_is_booted_and_its_own_disk_taken_with_its_serial(files: BootFiles) -> None:
    sims, clock = rig(("10000000000000b4", (1, 4)), ("10000000000000a3", (1, 3)))
    monitor = Monitor(sims, clock)
    got = targets(files, sims, clock, 2, monitor)
    # lowest USB path first; each target is the disk on that board's port
    assert got == [
        Target("/dev/sdb", 1, "10000000000000a3"),
        Target("/dev/sda", 2, "10000000000000b4"),
    ]
    for board in sims.values():
        assert board.second_stage == b"B4" * 1000
        assert board.files == {"config.txt": b"gadget=1\n", "start4.elf": b"\x7fELF" + b"s" * 100}
    # the first board's disk was there when the second was booted: only its own is taken
    assert monitor.offered == [["/dev/sdb"], ["/dev/sda"]]
    assert monitor.booted_inside == [["1-1.3"], ["1-1.4"]]


def test_no_board_in_boot_mode_ends_with_a_one_line_error(files: BootFiles) -> None:
    sims, clock = rig()
    with pytest.raises(FlashError, match="no board in USB boot mode appeared within 30 s"):
        targets(files, sims, clock, 1, Monitor(sims, clock))


def test_a_board_already_past_its_rom_is_not_taken_for_a_new_one(files: BootFiles) -> None:
    sims, clock = rig(("10000000000000a3", (1, 3)))
    sims["1-1.3"].reenumerate("second")  # some other rpiboot is serving it
    with pytest.raises(FlashError, match="no board in USB boot mode"):
        targets(files, sims, clock, 1, Monitor(sims, clock))
    assert not sims["1-1.3"].touched


def test_a_board_whose_disk_never_comes_stops_the_run_with_the_reason(files: BootFiles) -> None:
    sims, clock = rig(("10000000000000a3", (1, 3)), ("10000000000000b4", (1, 4)))
    monitor = Monitor(sims, clock)
    # the second board drops off the bus while its first file is sent
    sims["1-1.4"].leave_during = ("config.txt", 0, -4)
    made = booting(files, sims, clock, 2, monitor)
    assert next(made) == Target("/dev/sda", 1, "10000000000000a3")
    with pytest.raises(FlashError, match=r"left the USB bus while receiving config\.txt"):
        next(made)
