"""QEMU for one virtual board: the command line from the board profile's ``qemu`` table,
and starting it as a daemon that outlives the ``fleet`` process."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from fleet.boards import BoardProfile
from fleet.errors import LabError, ProgramError
from fleet.image.bootscript import (
    BOOTDELAY,
    RUN_BOOT_SCR,
    RUN_NETBOOT_SCR,
    boot_disk_env,
    uboot_env_blob,
)
from fleet.lab.state import Board, Extract, kill
from fleet.run import run

QEMU = {"aarch64": "qemu-system-aarch64", "armhf": "qemu-system-arm"}

# UARTs a machine has that firmware or kernel may print on. The Pi 3's U-Boot prints on
# the mini UART (serial1) while Linux's ttyAMA0 is the PL011 (serial0); all of them go
# into the one console (a mux), so the log shows the whole boot.
SERIAL_PORTS = {"raspi3b": 2}

# Debian's qemu_arm64 U-Boot keeps its environment in the virt machine's second flash
# bank (CONFIG_ENV_IS_IN_FLASH at 0x04000000, 256 KiB). QEMU gives the bank no contents
# unless it is given a drive, so U-Boot always started with its built-in environment:
# bootdelay=2 and a distro scan of qfw, USB, SCSI and virtio. The lab hands it a bank
# holding that same environment with bootdelay=0 and a bootcmd that runs the disk's
# boot.scr at once (the distro scan stays as its fallback).
FLASH_ENV = {"virt": (1, 64 * 2**20, 0x40000)}  # machine: (pflash unit, bank size, env size)


def _opt(value: str | Path) -> str:
    # QEMU option values are comma separated; a literal comma is written twice.
    return str(value).replace(",", ",,")


def loader_files(profile: BoardProfile, state_dir: Path) -> tuple[list[str], tuple[Extract, ...]]:
    """QEMU arguments that load the board's first code, and the files they need from the
    disk's first partition."""
    assert profile.qemu is not None
    loader = profile.bootloader
    if profile.qemu.loader == "bios":
        if loader is None:
            raise LabError(f"board {profile.name}: qemu loader 'bios' needs a [bootloader] table")
        bios = Path("/") / loader.file
        if not bios.is_file():
            raise LabError(
                f"{bios} not found: install the Debian package {loader.package} (make deps)"
            )
        return ["-bios", str(bios)], ()
    if loader is None or not loader.install.startswith("file:"):
        raise LabError(
            f"board {profile.name}: qemu loader 'kernel' needs [bootloader] install = 'file:NAME'"
        )
    member = loader.install.removeprefix("file:")
    kernel = state_dir / member
    args = ["-kernel", str(kernel)]
    extracts = [Extract(member=member, dest=str(kernel), required=True)]
    if profile.kernel.dtb:
        dtb_name = Path(profile.kernel.dtb).name
        dtb = state_dir / dtb_name
        # Optional: U-Boot for the Pi carries its own device tree and uses it when QEMU
        # passes none, so a disk without the .dtb still boots to U-Boot.
        extracts.append(Extract(member=dtb_name, dest=str(dtb), required=False))
    return args, tuple(extracts)


def default_env(bios: Path) -> list[str]:
    """U-Boot's built-in environment, read from its binary (it starts at bootcmd=)."""
    data = bios.read_bytes()
    start = data.find(b"bootcmd=run distro_bootcmd\0")
    if start < 0:
        raise LabError(f"{bios}: no built-in U-Boot environment found")
    end = data.find(b"\0\0", start)
    return [item.decode() for item in data[start:end].split(b"\0") if b"=" in item]


def flash_env_image(board_dir: Path) -> Path:
    return board_dir / "uboot-env.img"


def write_flash_env(
    profile: BoardProfile,
    board_dir: Path,
    bios: Path,
    bootdelay: int = 0,
    netboot: tuple[str, ...] = (),
    bootcmd: str | None = None,
) -> None:
    """Write the board's U-Boot environment bank (at every power-on: ``bootdelay`` > 0
    gives a person time to stop U-Boot at its prompt from the console). ``netboot``
    (NAME=VALUE items: ipaddr, serverip, ...) makes it a netbooting board: its bootcmd
    runs the server's boot.scr.uimg, as a user's U-Boot environment would; ``bootcmd``
    replaces the bootcmd (a benchmark's commands)."""
    assert profile.qemu is not None and profile.bootloader is not None
    _, bank, size = FLASH_ENV[profile.qemu.machine]
    run_script = RUN_NETBOOT_SCR if netboot else f"virtio scan; {RUN_BOOT_SCR}"
    bootcmd = f"bootcmd=pci enum; {bootcmd or f'{run_script}; run distro_bootcmd'}"
    delay = BOOTDELAY if bootdelay <= 0 else f"bootdelay={bootdelay}"
    overrides = [*profile.bootloader.env, *boot_disk_env(profile), *netboot, delay, bootcmd]
    names = {item.split("=", 1)[0] for item in overrides}
    items = [i for i in default_env(bios) if i.split("=", 1)[0] not in names] + overrides
    with open(flash_env_image(board_dir), "wb") as handle:
        handle.write(uboot_env_blob(items, size))
        handle.truncate(bank)


def flash_env_bios(profile: BoardProfile, argv: tuple[str, ...] | list[str]) -> Path | None:
    """The U-Boot binary of a board whose environment lives in a flash bank, or None."""
    qemu = profile.qemu
    if qemu is None or qemu.loader != "bios" or qemu.machine not in FLASH_ENV:
        return None
    return Path(argv[list(argv).index("-bios") + 1]) if "-bios" in argv else None


def build_argv(
    profile: BoardProfile,
    board_dir: Path,
    disk: Path,
    ssh_port: int,
    app_port: int,
    app_guest_port: int,
    loader_args: list[str],
    dtb: Path | None,
    faults: Path | None = None,
) -> list[str]:
    qemu = profile.qemu
    if qemu is None:
        raise LabError(f"board {profile.name} has no [qemu] table: it cannot run in the lab")
    console_sock = board_dir / "console.sock"
    argv = [QEMU[profile.arch], "-name", f"fleet-lab-{board_dir.name}", "-M", qemu.machine]
    if qemu.cpu:
        argv += ["-cpu", qemu.cpu]
    argv += ["-m", str(qemu.memory_mib), *loader_args]
    if flash_env_bios(profile, loader_args) is not None:
        unit = FLASH_ENV[qemu.machine][0]
        bank = _opt(flash_env_image(board_dir))
        argv += ["-drive", f"if=pflash,unit={unit},format=raw,file={bank}"]
    if dtb is not None:
        argv += ["-dtb", str(dtb)]
    if faults is None:
        image = f"file={_opt(disk)},format=raw"
    else:
        # blkdebug between the raw format and the file: the raw driver reports each read
        # and write to it, and the config's rules fail the ones they match (a dying card).
        image = (
            f"driver=raw,file.driver=blkdebug,file.config={_opt(faults)},"
            f"file.image.filename={_opt(disk)}"
        )
    # cache=unsafe: a board's flush does not become an fdatasync of the host's file. The
    # lab's power cut is the end of QEMU, not of the host: every write the board has been
    # told is done already sits in the host's page cache and survives it either way, so
    # what a power cut loses is the same as with writeback; only a crash of the host
    # itself would lose more. Each flush cost the emulated board a host disk round trip.
    if qemu.disk == "virtio":
        argv += [
            "-drive",
            f"if=none,{image},id=d0,cache=unsafe",
            "-device",
            "virtio-blk-pci,drive=d0",
        ]
    else:
        argv += ["-drive", f"if=sd,{image},cache=unsafe"]
    forwards = (
        f"hostfwd=tcp:127.0.0.1:{ssh_port}-:22,hostfwd=tcp:127.0.0.1:{app_port}-:{app_guest_port}"
    )
    netdev = f"user,id=n0,{forwards}"
    if qemu.net == "virtio":
        # romfile= : U-Boot does not need the iPXE option ROM, so QEMU need not find one.
        argv += ["-netdev", netdev, "-device", "virtio-net-pci,netdev=n0,romfile="]
    else:
        argv += ["-usb", "-device", "usb-net,netdev=n0", "-netdev", netdev]
    argv += [
        "-nodefaults",
        "-display",
        "none",
        "-chardev",
        f"socket,id=con0,path={_opt(console_sock)},server=on,wait=off,"
        f"logfile={_opt(board_dir / 'console.log')},logappend=on,mux=on",
    ]
    for _ in range(SERIAL_PORTS.get(qemu.machine, 1)):
        argv += ["-serial", "chardev:con0"]
    argv += [
        "-monitor",
        f"unix:{_opt(board_dir / 'monitor.sock')},server=on,wait=off",
        # A watchdog that fires resets the board, as the hardware one does; the board
        # also reboots itself to switch A/B slots, so there is no -no-reboot.
        "-action",
        "watchdog=reset",
        *qemu.extra,
        "-daemonize",
        "-pidfile",
        str(board_dir / "qemu.pid"),
    ]
    return argv


def start(board: Board) -> int:
    """Start QEMU in the background; return its pid once it runs."""
    board.pidfile.unlink(missing_ok=True)
    try:
        run(board.qemu_argv, cwd=board.state_dir, timeout=60)
    except ProgramError as exc:
        raise LabError(f"QEMU did not start board {board.name}: {exc}") from exc
    try:
        return int(board.pidfile.read_text().strip())
    except (OSError, ValueError) as exc:
        raise LabError(f"QEMU started but wrote no pidfile {board.pidfile}") from exc


def stop(board: Board, hard: bool, grace: float = 10.0) -> bool:
    """Stop the board's QEMU: SIGKILL when ``hard`` (a power cut), else SIGTERM (QEMU
    flushes the disk) and SIGKILL after ``grace`` seconds. False if it was not running."""
    pid = board.running_pid()
    if pid is None:
        return False
    kill(pid, signal.SIGKILL if hard else signal.SIGTERM)
    killed = hard
    deadline = time.monotonic() + grace
    while board.running_pid() is not None:
        if time.monotonic() > deadline:
            if killed:
                raise LabError(f"QEMU of board {board.name} (pid {pid}) does not die")
            kill(pid, signal.SIGKILL)
            killed = True
            deadline = time.monotonic() + grace
        time.sleep(0.05)
    board.pidfile.unlink(missing_ok=True)
    return True
