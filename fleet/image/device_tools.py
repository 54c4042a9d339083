"""Small programs of fleet's own that run on the board, cross-built with the app's
compilers: the reboot helper that passes "0 tryboot" to the Raspberry Pi firmware, and the
initramfs's dm-verity mapper."""

from __future__ import annotations

from pathlib import Path

from fleet.image.app import target_for
from fleet.run import run

DEVICE_DIR = Path(__file__).resolve().parent.parent / "device"


def build_reboot_helper(arch: str, work: Path, epoch: int) -> Path:
    """``fleet-reboot`` for ``arch``, built reproducibly (no paths, ids or times inside)."""
    target = target_for(arch)
    out = work / "fleet-reboot"
    run(
        [
            target.cc,
            "-O2",
            "-s",
            "-Wall",
            f"-ffile-prefix-map={DEVICE_DIR}=.",
            "-Wl,--build-id=none",
            "-o",
            out,
            DEVICE_DIR / "fleet-reboot.c",
        ],
        env={"SOURCE_DATE_EPOCH": str(epoch), "LC_ALL": "C"},
    )
    return out


def build_verity_helper(arch: str, work: Path, epoch: int) -> Path:
    """``fleet-verity`` for ``arch``: the initramfs's device-mapper client, linked
    statically (the initramfs has no C library), built reproducibly like fleet-reboot."""
    target = target_for(arch)
    out = work / "fleet-verity"
    run(
        [
            target.cc,
            "-Os",
            "-s",
            "-static",
            "-Wall",
            "-Wextra",
            "-Werror",
            f"-ffile-prefix-map={DEVICE_DIR}=.",
            "-Wl,--build-id=none",
            "-o",
            out,
            DEVICE_DIR / "fleet-verity.c",
        ],
        env={"SOURCE_DATE_EPOCH": str(epoch), "LC_ALL": "C"},
    )
    return out


def build_fleet_tool(arch: str, work: Path, epoch: int) -> Path:
    """``fleet-tool`` for ``arch``: the agent's lock and the app's unprivileged runner
    (fleet/device/fleet-tool.c), linked against the image's C library."""
    target = target_for(arch)
    out = work / "fleet-tool"
    run(
        [
            target.cc,
            "-O2",
            "-s",
            "-Wall",
            "-Wextra",
            "-Werror",
            f"-ffile-prefix-map={DEVICE_DIR}=.",
            "-Wl,--build-id=none",
            "-o",
            out,
            DEVICE_DIR / "fleet-tool.c",
        ],
        env={"SOURCE_DATE_EPOCH": str(epoch), "LC_ALL": "C"},
    )
    return out
