"""fleet flash onto several real loop devices in one run: distinct hostnames, every
target read back, and one bad target (a card whose writes fail partway, a device held
by another program) never stopping the others."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from provision_disks import held_by_another_program, make_disk
from terminal import run_on_terminal

from fleet import provision
from fleet.bmap import load_bmap, write_bmap
from fleet.flash.discovery import BlockDevice
from fleet.flash.many import Plan, Target, flash_target, run_all
from fleet.flash.wait import new_devices

pytestmark = pytest.mark.integration

FLEET = str(Path(sys.executable).parent / "fleet")
MiB = 1 << 20


def fleet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FLEET, *args], capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120
    )


def _attach(backing: Path) -> str:
    return subprocess.run(
        ["losetup", "--find", "--show", str(backing)], check=True, capture_output=True, text=True
    ).stdout.strip()


LoopMaker = Callable[..., str]


@pytest.fixture
def loops(tmp_path: Path) -> Iterator[LoopMaker]:
    attached: list[str] = []
    mounts: list[Path] = []

    def make(size: int = 32 * MiB, room: int | None = None) -> str:
        """A loop device of ``size`` bytes (0xA5 bytes, or sparse over a tmpfs with only
        ``room`` bytes of space: writes past that fail, as a failing card's do)."""
        folder = tmp_path / f"disk{len(attached)}"
        folder.mkdir()
        backing = folder / "backing.img"
        if room is not None:
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={room}", "tmpfs", str(folder)], check=True
            )
            mounts.append(folder)
            with open(backing, "wb") as handle:
                handle.truncate(size)
        else:
            backing.write_bytes(b"\xa5" * size)
        node = _attach(backing)
        attached.append(node)
        return node

    yield make
    for node in attached:
        subprocess.run(["losetup", "-d", node], check=False)
    for folder in mounts:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    return make_disk(tmp_path / "disk.img")  # 24 MiB, FAT partition 1, no bmap: every byte


def read(node: str, length: int) -> bytes:
    fd = os.open(node, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return os.pread(fd, length, 0)
    finally:
        os.close(fd)


def hostname_on(node: str) -> bytes | None:
    return provision.read(Path(node), "fleet/hostname")


def run_json(*args: str) -> tuple[int, dict[str, object], str]:
    result = fleet("flash", *args, "--json")
    return result.returncode, json.loads(result.stdout), result.stderr


def by_target(report: dict[str, object]) -> dict[str, dict[str, object]]:
    targets = report["targets"]
    assert isinstance(targets, list)
    return {t["target"]: t for t in targets}


def test_three_targets_get_the_image_and_their_own_hostnames(disk: Path, loops: LoopMaker) -> None:
    nodes = [loops() for _ in range(3)]
    args = [a for node in nodes for a in ("-d", node)]
    code, report, stderr = run_json(str(disk), *args, "--yes", "--hostname", "kiosk-{n:02}")
    assert code == 0, stderr
    assert report["ok"] is True
    targets = by_target(report)
    image = disk.read_bytes()
    for n, node in enumerate(nodes, 1):
        assert targets[node]["verified"] is True and targets[node]["ok"] is True
        assert targets[node]["hostname"] == f"kiosk-{n:02}"
        assert targets[node]["bytes_written"] == len(image)
        assert hostname_on(node) == f"kiosk-{n:02}\n".encode()
        # everything but the settings in partition 1 is the image, byte for byte
        assert read(node, 1 * MiB) == image[: 1 * MiB]
        assert read(node, len(image))[17 * MiB :] == image[17 * MiB :]
    # the summary table a person sees
    result = fleet("flash", str(disk), *args, "--yes", "--hostname", "kiosk-{n:02}")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["target", "serial", "hostname", "bytes", "seconds", "result"]
    assert [line.split()[0] for line in lines[1:]] == nodes
    assert all(line.split()[2] == f"kiosk-{n:02}" for n, line in enumerate(lines[1:], 1))
    assert all(line.endswith("verified") for line in lines[1:])


def test_a_target_failing_mid_write_does_not_stop_the_others(disk: Path, loops: LoopMaker) -> None:
    good1 = loops()
    failing = loops(room=8 * MiB)  # 32 MiB as the kernel sees it, 8 MiB that takes writes
    good2 = loops()
    code, report, stderr = run_json(
        str(disk), "-d", good1, "-d", failing, "-d", good2, "--yes", "--hostname", "pi-{n}"
    )
    assert code == 6
    assert f"1 of 3 targets failed: {failing}" in stderr
    targets = by_target(report)
    assert report["ok"] is False
    bad = targets[failing]
    assert bad["ok"] is False and bad["verified"] is False
    assert isinstance(bad["error"], str)
    assert "partial image" in bad["error"] and failing in bad["error"], bad["error"]
    image = disk.read_bytes()
    for node, name in ((good1, b"pi-1\n"), (good2, b"pi-3\n")):
        assert targets[node]["ok"] is True and targets[node]["verified"] is True
        assert hostname_on(node) == name
        assert read(node, 1 * MiB) == image[: 1 * MiB]


def test_a_held_device_is_refused_and_the_rest_are_flashed(disk: Path, loops: LoopMaker) -> None:
    free, held = loops(), loops()
    with held_by_another_program(held):
        code, report, stderr = run_json(
            str(disk), "-d", held, "-d", free, "--yes", "--hostname", "desk-{n}"
        )
    assert code == 6, stderr
    targets = by_target(report)
    assert targets[held]["ok"] is False
    assert f"{held} is busy" in str(targets[held]["error"])
    assert "was not changed" in str(targets[held]["error"])
    assert read(held, 4096) == b"\xa5" * 4096
    assert targets[free]["ok"] is True and hostname_on(free) == b"desk-2\n"


def test_every_safety_rule_still_applies_to_each_target(
    disk: Path, loops: LoopMaker, tmp_path: Path
) -> None:
    ok, small = loops(), loops(size=8 * MiB)
    code, report, _ = run_json(str(disk), "-d", small, "-d", ok, "--yes")
    assert code == 6
    targets = by_target(report)
    assert "too small" in str(targets[small]["error"])
    assert targets[ok]["ok"] is True
    assert read(small, 4096) == b"\xa5" * 4096


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--hostname", "kiosk"], "would name every target alike"),
        (["--hostname", "bad name {n}"], "hostname"),
        (["--hostname", "k-{n.__class__}"], "only {n}"),
        (["--allow-system-drive"], "flashed on its own"),
        (["--all-removable"], "give the targets one way"),
    ],
)
def test_bad_options_are_refused_before_any_write(
    disk: Path, loops: LoopMaker, extra: list[str], message: str
) -> None:
    nodes = [loops(), loops()]
    result = fleet("flash", str(disk), "-d", nodes[0], "-d", nodes[1], "--yes", *extra)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert all(read(node, 4096) == b"\xa5" * 4096 for node in nodes)


def test_one_disk_named_twice_is_refused(disk: Path, loops: LoopMaker) -> None:
    node = loops()
    again = f"/dev/../dev/{Path(node).name}"  # the same node by another spelling
    result = fleet("flash", str(disk), "-d", node, "-d", again, "--yes")
    assert result.returncode == 2
    assert "same disk" in result.stderr
    assert read(node, 4096) == b"\xa5" * 4096


def test_no_terminal_and_no_yes_writes_nothing(disk: Path, loops: LoopMaker) -> None:
    nodes = [loops(), loops()]
    result = fleet("flash", str(disk), "-d", nodes[0], "-d", nodes[1])
    assert result.returncode == 6
    assert "pass --yes" in result.stderr
    assert all(read(node, 4096) == b"\xa5" * 4096 for node in nodes)


def test_count_without_wait_is_refused(disk: Path) -> None:
    result = fleet("flash", str(disk), "--count", "3")
    assert result.returncode == 2 and "add --wait" in result.stderr


def test_targets_are_taken_as_they_appear(tmp_path: Path, loops: LoopMaker) -> None:
    """The --wait --count path: devices that appear one by one, each flashed as it comes
    while the next one is awaited (the real predicate refuses loop devices, so this one
    accepts only ours)."""
    image = tmp_path / "big.img"
    with open(image, "wb") as handle:
        handle.truncate(24 * MiB)
        handle.write(os.urandom(2 * MiB))
        handle.seek(20 * MiB)
        handle.write(os.urandom(1 * MiB))
    write_bmap(image, tmp_path / "big.img.bmap")
    bmap = load_bmap(tmp_path / "big.img.bmap")
    ours: list[str] = []
    started: list[str] = []

    def attach_next() -> None:
        ours.append(loops())

    def backed_here(device: BlockDevice) -> bool:
        # decided by the device alone: its event may come before losetup returns
        backing = Path(f"/sys/block/{device.name}/loop/backing_file")
        return backing.is_file() and backing.read_text().startswith(str(tmp_path))

    def later() -> None:  # the second and third cards come while the first is written
        for _ in range(2):
            while len(started) < len(ours):
                threading.Event().wait(0.05)
            attach_next()

    def arriving() -> Iterator[Target]:
        stream = new_devices(backed_here, timeout=30, on_listening=attach_next)
        for n in range(1, 4):
            device = next(stream)
            if n == 1:  # the monitor listens and the first card is there
                threading.Thread(target=later, daemon=True).start()
            yield Target(device.node, n)

    plan = Plan(image, bmap, tmp_path / "big.img.bmap", 24 * MiB, True, False, lambda t: None)
    run = run_all(
        arriving(),
        lambda t, cancel: flash_target(plan, t, None, cancel),
        on_start=lambda t: started.append(t.node),
    )
    assert run.ok, run
    assert [o.node for o in run.outcomes] == ours
    data = image.read_bytes()
    for node in ours:
        assert read(node, 2 * MiB) == data[: 2 * MiB]


def test_ctrl_c_stops_every_target_and_says_what_each_holds(
    tmp_path: Path, loops: LoopMaker
) -> None:
    big = tmp_path / "big.img"
    with open(big, "wb") as handle:
        handle.truncate(1024 * MiB)
    nodes = [loops(size=1024 * MiB), loops(size=1024 * MiB)]
    args = ["flash", str(big), "-d", nodes[0], "-d", nodes[1], "--yes", "--no-bmap"]
    # both progress bars show bytes on the device before the key is pressed
    code, screen, table = run_on_terminal(
        args, interrupt_on=r"loop\d+ writing.*[1-9][0-9.]*/1\.0 GiB"
    )
    flat = screen.replace("\r", "").replace("\n", " ")
    assert code == 6, screen
    assert "interrupted; 2 of 2 targets were not finished" in flat, screen
    for node in nodes:  # the summary on stdout says it for each
        assert re.search(rf"{node} .*FAILED: interrupted; {node} holds a partial image", table), (
            table
        )
    # nothing is left holding them: both can be flashed again at once
    again = fleet(*args, "--no-verify")
    assert again.returncode == 0, again.stderr


def test_usb_boot_boards_each_get_their_entry_of_a_settings_file_by_serial(
    disk: Path, loops: LoopMaker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--rpiboot --count 2 --settings boards.toml: two simulated boards in boot-ROM mode
    (the pyusb edge) are booted through fleet's real rpiboot, each one's gadget disk is a
    real loop device on its USB port, and each gets the boards.toml entry of its serial."""
    from rpiboot_sim import FakeClock, SimBoard
    from typer.testing import CliRunner

    from fleet.cli.main import register
    from fleet.flash import rpiboot, rpiboot_many
    from fleet.flash.discovery import device_info

    gadget = tmp_path / "mass-storage-gadget64"
    gadget.mkdir()
    (gadget / "bootcode4.bin").write_bytes(b"B4" * 1000)
    (gadget / "config.txt").write_bytes(b"gadget=1\n")
    (tmp_path / "boards.toml").write_text(
        '[[board]]\nhostname = "kiosk-01"\nserial = "10000000a1b2c3d4"\n\n'
        '[[board]]\nhostname = "kiosk-02"\nserial = "10000000ffff0002"\n'
    )
    script = [(rpiboot.GET_FILE_SIZE, "config.txt"), (rpiboot.READ_FILE, "config.txt"),
              (rpiboot.DONE, "")]
    clock = FakeClock()
    # the board on port 1.4 is found first by neither order nor serial: by its USB path
    boards = {
        "1-1.4": SimBoard(0x2711, list(script), "10000000ffff0002", (1, 4), clock=clock),
        "1-1.3": SimBoard(0x2711, list(script), "10000000a1b2c3d4", (1, 3), clock=clock),
    }
    disks = {"1-1.3": loops(), "1-1.4": loops()}

    def gadget_disks(predicate: Callable[[BlockDevice], bool], *, timeout: float,
                     on_listening: Callable[[], None]) -> BlockDevice:
        on_listening()
        up = [replace(device_info(disks[port]), kind="disk", rpi_msd=True, usb_port=port)
              for port, board in boards.items() if board.stage == "gone"]
        return next(d for d in up if predicate(d))

    real = rpiboot_many.booted_targets

    def booted(folder: Path, count: int, **kw: object) -> Iterator[Target]:
        return real(folder, count, timeout=30.0, log=lambda _m: None, wait=gadget_disks,
                    finder=lambda: [d for b in boards.values() for d in b.enumerate()],
                    clock=clock, sleep=clock.sleep)

    monkeypatch.setattr(rpiboot_many, "booted_targets", booted)
    result = CliRunner().invoke(register(["flash"]), [
        "flash", str(disk), "--rpiboot", "--rpiboot-files", str(gadget), "--count", "2",
        "--settings", str(tmp_path / "boards.toml"), "--yes", "--json",
    ])
    assert result.exit_code == 0, (result.output, result.exception)
    report = json.loads(result.stdout)
    targets = by_target(report)
    assert report["ok"] is True
    for port, name, serial in (("1-1.3", "kiosk-01", "10000000a1b2c3d4"),
                               ("1-1.4", "kiosk-02", "10000000ffff0002")):
        node = disks[port]
        assert targets[node]["serial"] == serial and targets[node]["hostname"] == name
        assert targets[node]["verified"] is True
        assert hostname_on(node) == f"{name}\n".encode()
        assert read(node, 1 * MiB) == disk.read_bytes()[: 1 * MiB]
        assert boards[port].second_stage == b"B4" * 1000
        assert boards[port].files == {"config.txt": b"gadget=1\n"}
