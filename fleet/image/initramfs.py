"""The initramfs: static busybox, the drivers needed to reach the root filesystem, and
fleet's tiny init that mounts the slot's squashfs and switches to it."""

from __future__ import annotations

import gzip
from pathlib import Path

from fleet.image import cpio
from fleet.image.kernel import KernelTree

INIT = Path(__file__).resolve().parent.parent / "device" / "initramfs-init"


def build_initramfs(
    busybox: Path, kernel: KernelTree, modules: list[Path], mtime: int, root_prefix: str
) -> bytes:
    """A gzip-compressed newc archive; the same inputs give the same bytes.

    ``root_prefix`` (e.g. /dev/mmcblk0p) names the root partitions when the bootloader
    does not (the Pi firmware's tryboot)."""
    entries = [
        cpio.directory("bin"),
        cpio.file("bin/busybox", busybox.read_bytes(), executable=True),
        cpio.directory("dev"),
        cpio.directory("etc"),
        cpio.directory("lib"),
        cpio.directory("lib/modules"),
        cpio.directory("newroot"),
        cpio.directory("proc"),
        cpio.directory("sys"),
        cpio.file("init", INIT.read_bytes(), executable=True),
    ]
    names = []
    for module in modules:
        name = module.name
        entries.append(cpio.file(f"lib/modules/{name}", module.read_bytes()))
        names.append(name)
    entries.append(cpio.file("etc/modules", ("\n".join(names) + "\n").encode()))
    entries.append(cpio.file("etc/root-prefix", f"{root_prefix}\n".encode()))
    blob = cpio.archive(entries, mtime=mtime)
    return gzip.compress(blob, compresslevel=9, mtime=mtime)
