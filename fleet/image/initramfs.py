"""The initramfs: static busybox, the drivers needed to reach the root filesystem, the
static ``fleet-verity`` mapper, the slot's dm-verity parameters, and fleet's tiny init
that maps the slot's root partition through dm-verity, mounts the verified squashfs and
switches to it."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from fleet.image import cpio
from fleet.image.disk import DISK_LABEL_ID
from fleet.image.kernel import KernelTree
from fleet.release import Verity
from fleet.run import run

INIT = Path(__file__).resolve().parent.parent / "device" / "initramfs-init"
NETBOOT = INIT.with_name("netboot-root")


def verity_file(verity: Verity) -> bytes:
    """``etc/verity``: what initramfs-init needs for the ``verity`` table, key=value."""
    fields = {
        "root_hash": verity.root_hash,
        "salt": verity.salt,
        "data_blocks": str(verity.data_blocks),
        "hash_start": str(verity.hash_start_block),
        "block_size": str(verity.block_size),
        "algorithm": verity.algorithm,
    }
    return "".join(f"{key}={value}\n" for key, value in fields.items()).encode()


def build_initramfs(
    busybox: Path,
    kernel: KernelTree,
    modules: list[Path],
    mtime: int,
    *,
    mapper: Path,
    verity: Verity,
) -> bytes:
    """A zstd-compressed newc archive; the same inputs give the same bytes.

    etc/disk-id (the image's MBR disk identifier) names the root partitions by PARTUUID
    when the bootloader does not (the Pi firmware's tryboot). ``mapper`` is the static
    fleet-verity program (it also loads the modules), ``verity`` the slot's rootfs hash
    tree parameters."""
    entries = _entries(busybox, modules, mapper=mapper, verity=verity)
    return compress(cpio.archive(entries, mtime=mtime))


def _entries(
    busybox: Path, modules: list[Path], *, mapper: Path, verity: Verity
) -> list[cpio.Entry]:
    entries = [
        cpio.directory("bin"),
        cpio.file("bin/busybox", busybox.read_bytes(), executable=True),
        cpio.file("bin/fleet-verity", mapper.read_bytes(), executable=True),
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
    disk_id = DISK_LABEL_ID.removeprefix("0x")
    entries.append(cpio.file("etc/disk-id", f"{disk_id}\n".encode()))
    entries.append(cpio.file("etc/verity", verity_file(verity)))
    return entries


# What netboot-root needs from the slot's root filesystem: the board's pinned trust and
# the checker the board runs on every release (the same files, so the netboot check is
# the one an update gets).
NETBOOT_TRUST = ("etc/fleet/verify-release", "etc/fleet/revoked", "etc/fleet/threshold")


def build_netboot_initramfs(
    busybox: Path,
    modules: list[Path],
    mtime: int,
    *,
    mapper: Path,
    verity: Verity,
    root: Path,
    signify: list[PurePosixPath],
    board: str,
    interface: str,
) -> bytes:
    """The initramfs a netbooted board runs (initrd-net.zst): the disk one, plus what it
    takes to fetch the rootfs and the signed manifest over TFTP and check them before
    use. ``root`` is the staged root filesystem the pinned keys and ``signify`` (the
    signify program with its loader and libraries, image paths) are copied from;
    ``modules`` includes the network driver's and loop's."""
    entries = _entries(busybox, modules, mapper=mapper, verity=verity)
    entries.append(cpio.file("bin/netboot-root", NETBOOT.read_bytes(), executable=True))
    entries.append(cpio.file("etc/netboot", f"board={board}\ninterface={interface}\n".encode()))
    names = [
        *NETBOOT_TRUST,
        *sorted(str(p.relative_to(root)) for p in (root / "etc/fleet/keys").glob("*.pub")),
    ]
    made = {e.path for e in entries}
    for name in [*names, *(str(p) for p in sorted(signify))]:
        parts = PurePosixPath(name).parts
        for depth in range(1, len(parts)):
            folder = "/".join(parts[:depth])
            if folder not in made:
                entries.append(cpio.directory(folder))
                made.add(folder)
        source = root / name
        if source.is_symlink():
            entries.append(cpio.symlink(name, os.readlink(source)))
        else:
            entries.append(cpio.file(name, source.read_bytes(), os.access(source, os.X_OK)))
        made.add(name)
    return compress(cpio.archive(entries, mtime=mtime))


# zstd -19 rather than gzip -9: 1.16 MB instead of 1.51 for the virt board's, and the
# kernel unpacks it about twice as fast, on every boot (docs/images.md). --no-check: the
# slot's payload digest already covers these bytes. One thread, so the bytes are the same
# on every machine.
def compress(blob: bytes) -> bytes:
    return run(["zstd", "-19", "-q", "-T1", "--no-check", "-c"], input=blob).stdout


def decompress(data: bytes) -> bytes:
    """The newc archive inside an initramfs made by ``compress``."""
    return run(["zstd", "-d", "-q", "-c"], input=data).stdout
