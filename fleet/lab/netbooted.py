"""A virtual board that netboots: its only NIC on a tap device inside a network namespace,
where `fleet serve` answers it. QEMU's user networking would answer TFTP itself, on its
own host alias, so the board's network must be a real one; the namespace keeps it off
the host's (addresses from 192.0.2.0/24, the documentation range)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from fleet.boards import BoardProfile
from fleet.errors import LabError
from fleet.lab import qemu
from fleet.run import run

SERVER = "192.0.2.1"
BOARD = "192.0.2.10"
NETMASK = "255.255.255.0"


@dataclass(frozen=True)
class NetLab:
    """A network namespace with one tap device, the server's address on it."""

    namespace: str
    tap: str

    def up(self) -> NetLab:
        self.down()
        try:
            run(["ip", "netns", "add", self.namespace])
            for cmd in (
                ["tuntap", "add", "dev", self.tap, "mode", "tap"],
                ["addr", "add", f"{SERVER}/24", "dev", self.tap],
                ["link", "set", self.tap, "up"],
                ["link", "set", "lo", "up"],
            ):
                run(["ip", "-n", self.namespace, *cmd])
        except Exception:
            self.down()
            raise
        return self

    def down(self) -> None:
        subprocess.run(["ip", "netns", "del", self.namespace], capture_output=True, check=False)

    def inside(self, *argv: str | Path) -> list[str]:
        """``argv`` run inside the namespace."""
        return ["ip", "netns", "exec", self.namespace, *map(str, argv)]


def board_argv(
    profile: BoardProfile,
    lab: NetLab,
    folder: Path,
    disk: Path,
    uboot_env: tuple[str, ...] = (),
    bootcmd: str | None = None,
) -> list[str]:
    """QEMU for a netbooting ``profile`` board (a QEMU virt one: U-Boot from -bios, its
    environment in flash) with ``disk`` attached, console to folder/console.log. The
    U-Boot environment gets the board's and server's addresses and ``uboot_env``;
    ``bootcmd``, if given, runs after ``pci enum`` instead of the netboot."""
    bios_args, _ = qemu.loader_files(profile, folder)
    bios = qemu.flash_env_bios(profile, bios_args)
    if profile.qemu is None or bios is None:
        raise LabError(f"board {profile.name} cannot netboot in the lab (no U-Boot in flash)")
    addresses = (f"ipaddr={BOARD}", f"serverip={SERVER}", f"netmask={NETMASK}")
    qemu.write_flash_env(profile, folder, bios, netboot=(*addresses, *uboot_env), bootcmd=bootcmd)
    unit = qemu.FLASH_ENV[profile.qemu.machine][0]
    argv = [qemu.QEMU[profile.arch], "-M", profile.qemu.machine, "-m", str(profile.qemu.memory_mib)]
    if profile.qemu.cpu:
        argv += ["-cpu", profile.qemu.cpu]
    env_image = qemu.flash_env_image(folder)
    return [
        *argv,
        *bios_args,
        "-drive",
        f"if=pflash,unit={unit},format=raw,file={env_image}",
        "-drive",
        f"if=none,file={disk},format=raw,id=d0",
        "-device",
        "virtio-blk-pci,drive=d0",
        "-netdev",
        f"tap,id=n0,ifname={lab.tap},script=no,downscript=no",
        "-device",
        "virtio-net-pci,netdev=n0,romfile=",
        *profile.qemu.extra,
        "-nodefaults",
        "-display",
        "none",
        "-serial",
        f"file:{folder / 'console.log'}",
    ]
