"""Small programs of fleet's own that run on the board, cross-built with the app's
compilers: today the reboot helper that passes "0 tryboot" to the Raspberry Pi firmware."""

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
