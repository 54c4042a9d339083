"""The initramfs: static busybox, the drivers needed to reach the root filesystem, the
static ``fleet-verity`` mapper, the slot's dm-verity parameters, and fleet's tiny init
that maps the slot's root partition through dm-verity, mounts the verified squashfs and
switches to it."""

from __future__ import annotations

from pathlib import Path

from fleet.image import cpio
from fleet.image.disk import DISK_LABEL_ID
from fleet.image.kernel import KernelTree
from fleet.release import Verity
from fleet.run import run

INIT = Path(__file__).resolve().parent.parent / "device" / "initramfs-init"


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
