"""The boot logic a board's bootloader runs: a U-Boot script for uboot-ab boards, the
firmware's config files for rpi-tryboot boards."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

from fleet.boards import BoardProfile
from fleet.errors import BuildError
from fleet.image.disk import DISK_LABEL_ID
from fleet.run import run

DEVICE_DIR = Path(__file__).resolve().parent.parent / "device"
DTB_NAME = "board.dtb"


def uboot_script_text() -> str:
    """The boot script: the same bytes for every uboot-ab board (uboot_board_text holds
    what differs), so the logic a real Pi runs is the logic the virtual boards prove."""
    template = (DEVICE_DIR / "boot-uboot-ab.cmd").read_text()
    return template.replace("@DISKID@", DISK_LABEL_ID.removeprefix("0x"))


BOARD_FILE = "fleet/uboot-board.txt"


def uboot_board_text(profile: BoardProfile) -> str:
    """fleet/uboot-board.txt: the board's own values, in `env import -t` form."""
    env = profile.bootloader.env if profile.bootloader else ()
    lines = [*env, f"fleet_console={profile.console},{profile.baud}"]
    # No fleet_dtb: QEMU virt hands U-Boot the machine's device tree and the script
    # passes that one on.
    if profile.kernel.dtb:
        lines.append(f"fleet_dtb={DTB_NAME}")
    return "\n".join(lines) + "\n"


NETBOOT_SCRIPT = "boot.scr.uimg"
NETBOOT_INITRD = "initrd-net.zst"


def netboot_script_text(profile: BoardProfile) -> str:
    """boot.scr.uimg's source: the netboot logic, with the board's own values first (no
    fleet/uboot-board.txt to read: the board may have no disk)."""
    template = (DEVICE_DIR / "boot-uboot-net.cmd").read_text()
    board = []
    for line in uboot_board_text(profile).splitlines():
        name, value = line.split("=", 1)
        board.append(f"setenv {name} {value}")
    return template.replace("@BOARD@", "\n".join(board))


def make_uboot_script(work: Path, text: str | None = None, name: str = "boot.scr") -> Path:
    """A U-Boot script image (mkimage -T script) of ``text``, the A/B boot script unless
    given."""
    source = work / f"{name}.cmd"
    source.write_text(uboot_script_text() if text is None else text)
    output = work / name
    # mkimage stamps the time into the header; SOURCE_DATE_EPOCH keeps it fixed.
    run(
        [
            "mkimage",
            "-A",
            "arm64",
            "-O",
            "linux",
            "-T",
            "script",
            "-C",
            "none",
            "-n",
            "fleet boot",
            "-d",
            source,
            output,
        ],
        env={"SOURCE_DATE_EPOCH": "0"},
    )
    return output


def uboot_saved_env(profile: BoardProfile) -> bytes:
    """The U-Boot environment file for partition 1: the profile's variables and a bootcmd
    that runs boot.scr, and nothing else. Debian's Pi 3 U-Boot otherwise runs its default
    ``preboot=usb start``; on QEMU raspi3b that consumes the USB port's only connect event
    (QEMU's dwc2 raises it on reset or hotplug alone), so Linux never sees its network.
    Skipping the scan also saves real boards the USB enumeration."""
    loader = profile.bootloader
    assert loader is not None and loader.saved_env
    # bootdelay=0: no wait, but a key already pressed on the console still stops it.
    items = (*loader.env, *boot_disk_env(profile), BOOTDELAY, f"bootcmd={RUN_BOOT_SCR}")
    return uboot_env_blob(items, loader.saved_env_size)


# A bootcmd's way to boot.scr on the disk that boot_disk_env names.
RUN_BOOT_SCR = "load ${devtype} ${devnum}:1 ${scriptaddr} boot.scr && source ${scriptaddr}"
# A bootcmd's way to netboot from `fleet serve` (ipaddr and serverip set, or `dhcp` first).
RUN_NETBOOT_SCR = "tftpboot ${scriptaddr} boot.scr.uimg && source ${scriptaddr}"


def boot_disk_env(profile: BoardProfile) -> tuple[str, str]:
    """devtype and devnum, which name the disk to boot.scr as U-Boot's distro boot scan
    does, for a bootcmd that runs boot.scr itself."""
    devtype, devnum = profile.storage.uboot_disk.split()
    return f"devtype={devtype}", f"devnum={devnum}"


# U-Boot's autoboot delay: 0 boots at once (its default, 2 s, is the longest single wait
# of a boot), yet U-Boot still checks the console once, so a key held or typed as the
# board powers on stops it at its prompt for debugging.
BOOTDELAY = "bootdelay=0"


def uboot_env_blob(items: tuple[str, ...] | list[str], size: int) -> bytes:
    """A U-Boot environment of ``size`` bytes holding ``items`` (NAME=VALUE) only."""
    body = b"".join(item.encode() + b"\0" for item in items)
    if len(body) + 1 > size - 4:
        raise BuildError(f"U-Boot environment needs {len(body) + 1} bytes, it holds {size - 4}")
    # U-Boot's env file layout: CRC32 of the rest, then NUL-ended pairs, NUL padding.
    body += bytes(size - 4 - len(body))
    return struct.pack("<I", zlib.crc32(body)) + body


def tryboot_autoboot_txt() -> str:
    # The firmware boots partition 2 normally and partition 3 once after `reboot '0 tryboot'`.
    return "[all]\ntryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=3\n"


# Firmware settings that shorten a Pi's boot (docs/images.md says what each saves):
# no wait before the kernel is loaded, no rainbow splash, no probe of a HAT's ID EEPROM
# (a board with no HAT has none to read).
FAST_FIRMWARE = ("boot_delay=0", "disable_splash=1", "force_eeprom_read=0")


def tryboot_config_txt(profile: BoardProfile) -> str:
    lines = [
        "arm_64bit=1",
        "enable_uart=1",
        "kernel=Image.gz",
        "initramfs initrd.zst followkernel",
        *FAST_FIRMWARE,
    ]
    if profile.kernel.dtb:
        lines.append(f"device_tree={DTB_NAME}")
    return "\n".join(lines) + "\n"


def tryboot_cmdline_txt(profile: BoardProfile) -> str:
    # No slot is named: the initramfs finds its root from the partition the firmware
    # booted (device tree chosen/bootloader/partition), so slots A and B share bytes.
    return f"console={profile.console},{profile.baud} panic=5 loglevel=4 cryptomgr.notests\n"
