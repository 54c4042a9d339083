"""Small programs of fleet's own that run on the board, cross-built with the app's
compilers: the reboot helper that passes "0 tryboot" to the Raspberry Pi firmware, the
agent's lock and the app's unprivileged runner (fleet-tool), the initramfs's dm-verity
mapper (which also loads the initramfs's modules), the system's module loader
(fleet-modules) and the delta applier (fleet-delta)."""

from __future__ import annotations

from pathlib import Path

from fleet import data_dir
from fleet.image.app import target_for
from fleet.run import run

DEVICE_DIR = data_dir("device")


def _build(
    name: str,
    arch: str,
    work: Path,
    epoch: int,
    *,
    static: bool = False,
    libs: tuple[str, ...] = (),
) -> Path:
    """fleet/device/NAME.c for ``arch``, built reproducibly (no paths, ids or times
    inside); ``static`` for programs that run where there is no C library."""
    out = work / name
    run(
        [
            target_for(arch).cc,
            "-Os" if static else "-O2",
            "-s",
            *(["-static"] if static else []),
            "-Wall",
            "-Wextra",
            "-Werror",
            f"-ffile-prefix-map={DEVICE_DIR}=.",
            "-Wl,--build-id=none",
            "-o",
            out,
            DEVICE_DIR / f"{name}.c",
            *libs,
        ],
        env={"SOURCE_DATE_EPOCH": str(epoch), "LC_ALL": "C"},
    )
    return out


def build_reboot_helper(arch: str, work: Path, epoch: int) -> Path:
    """``fleet-reboot``: restart with an argument for the firmware (RESTART2)."""
    return _build("fleet-reboot", arch, work, epoch)


def build_verity_helper(arch: str, work: Path, epoch: int) -> Path:
    """``fleet-verity``: the initramfs's device-mapper client, linked statically (the
    initramfs has no C library)."""
    return _build("fleet-verity", arch, work, epoch, static=True)


def build_module_loader(arch: str, work: Path, epoch: int) -> Path:
    """``fleet-modules``: loads the system's kernel modules in one process (the initramfs
    has the same code in fleet-verity --modules)."""
    return _build("fleet-modules", arch, work, epoch)


def build_fleet_tool(arch: str, work: Path, epoch: int) -> Path:
    """``fleet-tool``: the agent's lock and the app's unprivileged runner, linked against
    the image's C library."""
    return _build("fleet-tool", arch, work, epoch)


# Debian's libzstd-dev for the board's architecture (multiarch), linked in statically: the
# image then needs no libzstd1 of its own, and the applier is one file of about 200 KB.
ZSTD_STATIC = {"aarch64": Path("/usr/lib/aarch64-linux-gnu/libzstd.a")}


def build_delta_applier(arch: str, work: Path, epoch: int) -> Path | None:
    """``fleet-delta``: applies a zstd --patch-from delta against the running slot (docs/
    delta.md). None where this machine has no libzstd for ``arch``: the image then takes
    every update in full, as an image built before deltas does."""
    archive = ZSTD_STATIC.get(arch)
    if archive is None or not archive.exists():
        return None
    return _build(
        "fleet-delta", arch, work, epoch, libs=("-Wl,-Bstatic", "-lzstd", "-Wl,-Bdynamic")
    )
