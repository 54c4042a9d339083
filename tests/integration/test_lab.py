"""The virtual lab with real QEMU and Debian's U-Boot builds, booting a small disk whose
U-Boot script prints the lab's "up" line (the full image's boot tests live in
tests/virtual). SSH readiness is switched off here: U-Boot runs no SSH server."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet import lab
from fleet.errors import UsageError
from tests.conftest import NEEDS_QEMU

pytestmark = [
    pytest.mark.integration,
    NEEDS_QEMU,
]

FLEET = str(Path(sys.executable).parent / "fleet")
PART_START = 2048  # sectors
MTOOLS = {"MTOOLS_SKIP_CHECK": "1"}


def make_disk(path: Path, size_mib: int, extra: dict[str, Path] | None = None) -> Path:
    """A raw disk: DOS table, FAT first partition with a U-Boot script that prints the up
    line and then waits (as a booted system would)."""
    work = path.parent / f"{path.name}.d"
    work.mkdir()
    (work / "boot.cmd").write_text("echo fleet: system up\nsleep 1000\n")
    subprocess.run(
        ["mkimage", "-q", "-T", "script", "-C", "none", "-d", work / "boot.cmd", work / "boot.scr"],
        check=True,
    )
    with open(path, "wb") as handle:
        handle.truncate(size_mib * 1024 * 1024)
    fat_sectors = (size_mib - 2) * 2048
    subprocess.run(
        ["sfdisk", "-q", str(path)],
        input=f"label: dos\nstart={PART_START}, size={fat_sectors}, type=c, bootable\n".encode(),
        check=True,
    )
    subprocess.run(
        ["mkfs.vfat", "-n", "BOOT", "--offset", str(PART_START), str(path), str(fat_sectors // 2)],
        check=True,
        capture_output=True,
    )
    files = {"boot.scr": work / "boot.scr", **(extra or {})}
    for name, source in files.items():
        mcopy(path, str(source), f"::/{name}")
    return path


def mcopy(disk: Path, src: str, dst: str) -> None:
    subprocess.run(
        ["mcopy", "-o", "-i", f"{disk}@@{PART_START * 512}", src, dst],
        check=True,
        env={**os.environ, **MTOOLS},
    )


def mtype(disk: Path, member: str) -> str:
    proc = subprocess.run(
        ["mtype", "-i", f"{disk}@@{PART_START * 512}", member],
        capture_output=True,
        env={**os.environ, **MTOOLS},
    )
    return proc.stdout.decode() if proc.returncode == 0 else ""


@pytest.fixture
def lab_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    root = tmp_path / "lab"
    monkeypatch.setenv("FLEET_LAB_DIR", str(root))
    yield root
    for board in lab.list_boards():
        lab.down(board.name)


def fleet(lab_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FLEET, *args],
        capture_output=True,
        text=True,
        env={**os.environ, "FLEET_LAB_DIR": str(lab_dir)},
        timeout=180,
    )


def listing(lab_dir: Path) -> dict[str, dict[str, object]]:
    proc = fleet(lab_dir, "lab", "list", "--json")
    assert proc.returncode == 0, proc.stderr
    return {b["name"]: b for b in json.loads(proc.stdout)}


def test_up_list_console_power_cycle_down(lab_dir: Path, tmp_path: Path) -> None:
    image = make_disk(tmp_path / "disk.img", 32)
    before = image.read_bytes()
    up = fleet(
        lab_dir, "lab", "up", "--board", "qemu-virt-arm64", "--disk", str(image),
        "--name", "b1", "--no-ssh-wait", "--timeout", "60", "--json",
    )  # fmt: skip
    assert up.returncode == 0, up.stderr
    info = json.loads(up.stdout)
    assert info["state"] == "running" and info["board"] == "qemu-virt-arm64"
    assert "b1: up after" in up.stderr

    # Flashing copied the image and provisioned the copy, never the source.
    disk = Path(info["disk"])
    assert disk.parent == lab_dir / "b1"
    assert image.read_bytes() == before
    assert mtype(disk, "::/fleet/hostname") == "b1\n"
    public_key = (lab_dir / "id_ed25519.pub").read_text()
    assert public_key.startswith("ssh-ed25519 ")
    assert mtype(disk, "::/fleet/authorized_keys") == public_key

    board = listing(lab_dir)["b1"]
    assert board["state"] == "running" and board["pid"] == info["pid"]
    ssh_port, app_port = board["ssh_port"], board["app_port"]
    assert ssh_port != app_port

    log = fleet(lab_dir, "lab", "console", "b1", "--log")
    assert log.returncode == 0
    assert log.stdout.count("fleet: system up") == 1 and "U-Boot" in log.stdout

    cycle = fleet(lab_dir, "lab", "power", "b1", "cycle", "--timeout", "60", "--json")
    assert cycle.returncode == 0, cycle.stderr
    after = json.loads(cycle.stdout)
    assert after["pid"] != info["pid"]
    assert (after["ssh_port"], after["app_port"]) == (ssh_port, app_port)
    # Power was cut, U-Boot started again on the same disk, and this boot was seen anew.
    text = Path(info["console_log"]).read_text(errors="replace")
    assert text.count("fleet: system up") == 2
    assert text.count("Hit any key to stop autoboot") == 2

    off = fleet(lab_dir, "lab", "power", "b1", "off")
    assert off.returncode == 0, off.stderr
    assert listing(lab_dir)["b1"]["state"] == "stopped"

    # U-Boot boots at once (bootdelay=0); a person who wants its prompt asks for a delay.
    on = fleet(lab_dir, "lab", "power", "b1", "on", "--no-wait", "--bootdelay", "5")
    assert on.returncode == 0, on.stderr
    interact_with_u_boot(lab_dir, "b1", Path(info["console_log"]))

    down = fleet(lab_dir, "lab", "down", "b1", "--rm")
    assert down.returncode == 0, down.stderr
    assert "b1" not in listing(lab_dir)
    assert not (lab_dir / "b1").exists()


def wait_for(path: Path, offset: int, needle: bytes) -> bytes:
    for _ in range(300):
        data = path.read_bytes()[offset:]
        if needle in data:
            return data
        time.sleep(0.1)
    raise AssertionError(f"{needle!r} never appeared in {path}")


def interact_with_u_boot(lab_dir: Path, name: str, log: Path) -> None:
    """Attach `fleet lab console` as a user would, stop U-Boot's autoboot with a key, run
    a command at its prompt, detach with Ctrl-]."""
    offset = log.stat().st_size
    console = subprocess.Popen(
        [FLEET, "lab", "console", name],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "FLEET_LAB_DIR": str(lab_dir)},
    )
    assert console.stdin is not None
    console.stdin.write(b" ")
    console.stdin.flush()
    wait_for(log, offset, b"=> ")
    console.stdin.write(b"echo typed-$((6*7))\r")
    console.stdin.flush()
    seen = wait_for(log, offset, b"\ntyped-$((6*7))")
    console.stdin.write(b"\x1d")
    out, err = console.communicate(timeout=30)
    assert console.returncode == 0
    assert b"detach with Ctrl-]" in err
    assert b"typed-$((6*7))" in out and b"typed-$((6*7))" in seen


def test_timeout_names_the_last_console_line_and_keeps_the_board(
    lab_dir: Path, tmp_path: Path
) -> None:
    image = make_disk(tmp_path / "disk.img", 32)
    proc = fleet(
        lab_dir, "lab", "up", "--board", "qemu-virt-arm64", "--disk", str(image), "--name", "slow",
        "--in-place", "--timeout", "8",
    )  # fmt: skip
    assert proc.returncode == 7
    last = proc.stderr.strip().splitlines()[-1]
    # The console said it is up, but no SSH server answers behind the forwarded port
    # (QEMU itself accepts the connection, so only the banner counts).
    assert last.startswith("fleet: error: board slow not up after 8 s (waiting for an SSH banner)")
    assert "last console line: 'fleet: system up'" in last
    assert f"console log: {lab_dir / 'slow' / 'console.log'}" in last
    # Left running for inspection; --in-place booted (and provisioned) the image itself.
    assert listing(lab_dir)["slow"]["state"] == "running"
    assert listing(lab_dir)["slow"]["disk"] == str(image)
    assert mtype(image, "::/fleet/hostname") == "slow\n"

    again = fleet(
        lab_dir, "lab", "up", "--board", "qemu-virt-arm64", "--disk", str(image), "--name", "slow",
    )  # fmt: skip
    assert again.returncode == 7
    assert "is running" in again.stderr and "fleet lab down slow" in again.stderr


def test_python_api_rpi3b_boots_u_boot_from_the_sd_card(lab_dir: Path, tmp_path: Path) -> None:
    uboot = Path("/usr/lib/u-boot/rpi_3/u-boot.bin")
    if not uboot.exists():
        pytest.skip("u-boot-rpi not installed")
    image = make_disk(tmp_path / "sd.img", 32, {"kernel8.img": uboot})
    notes: list[str] = []
    board = lab.up("rpi3b", image, "pi", timeout=90, wait_ssh=False, note=notes.append)
    assert board.profile == "rpi3b"
    assert board.running_pid() is not None
    # QEMU stands in for the GPU firmware: it was given U-Boot from the card's FAT.
    assert (board.state_dir / "kernel8.img").read_bytes() == uboot.read_bytes()
    assert "fleet: system up" in board.console_log.read_text(errors="replace")
    assert any("booting without -dtb" in n for n in notes)
    assert lab.get("pi").ssh_port == board.ssh_port
    assert lab.down("pi") is True
    assert lab.get("pi").running_pid() is None


def test_sd_card_size_must_be_a_power_of_two(lab_dir: Path, tmp_path: Path) -> None:
    image = make_disk(tmp_path / "sd.img", 48)
    proc = fleet(lab_dir, "lab", "up", "--board", "rpi3b", "--disk", str(image), "--name", "pi")
    assert proc.returncode == 7
    assert "must be a power of two" in proc.stderr
    assert not (lab_dir / "pi" / "board.json").exists()


def test_bad_names_and_unknown_boards(lab_dir: Path, tmp_path: Path) -> None:
    image = make_disk(tmp_path / "disk.img", 32)
    with pytest.raises(Exception, match="bad board name 'No_Caps'"):
        lab.up("qemu-virt-arm64", image, "No_Caps")
    proc = fleet(lab_dir, "lab", "ssh", "ghost", "--", "true")
    assert proc.returncode == 7
    assert proc.stderr.strip() == "fleet: error: no lab board named 'ghost' (boards: none)"
    with pytest.raises(UsageError, match="not virtual"):
        lab.up("rpi4b", image, "real")


def test_a_reset_reboots_in_the_same_qemu_and_wait_until_up_sees_it(
    lab_dir: Path, tmp_path: Path
) -> None:
    image = make_disk(tmp_path / "disk.img", 32)
    board = lab.up("qemu-virt-arm64", image, "r1", timeout=60, wait_ssh=False)
    pid = board.running_pid()
    mark = lab.console_mark(board)
    # What a board does when it reboots itself (A/B switch) or its watchdog fires.
    with socket.socket(socket.AF_UNIX) as monitor:
        monitor.connect(str(board.monitor_socket))
        monitor.sendall(b"system_reset\n")
        wait_for(board.console_log, mark, b"U-Boot")
    lab.wait_until_up(board, mark, timeout=60)
    assert board.running_pid() == pid
    assert board.console_log.read_text(errors="replace").count("fleet: system up") == 2
