"""The virtual board's disk: a sparse copy of the image ("flashing") and files read back
out of its first (FAT) partition for QEMU, through mtools (no mount, no root). The
per-board settings are written by fleet.provision, as for real boards."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from fleet.errors import LabError
from fleet.run import run

MTOOLS_ENV = {"MTOOLS_SKIP_CHECK": "1", "MTOOLS_NO_VFAT": "0"}


def copy_sparse(source: Path, dest: Path) -> None:
    """Copy ``source`` to ``dest`` keeping holes (and sharing extents where the
    filesystem can), the way a flash tool skips unmapped blocks."""
    tmp = dest.with_name(f".{dest.name}.tmp")
    run(["cp", "--sparse=always", "--reflink=auto", source, tmp])
    os.replace(tmp, dest)


def disk_size(path: Path) -> int:
    """Size in bytes of a file or block device."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def require_power_of_two(path: Path, machine: str) -> None:
    size = disk_size(path)
    if size <= 0 or size & (size - 1):
        raise LabError(
            f"{path} is {size} bytes; QEMU's {machine} SD card must be a power of two in size "
            f"(fleet build makes SD images so; grow it with: qemu-img resize -f raw {path} "
            f"{1 << max(size - 1, 1).bit_length()})"
        )


def first_partition_offset(disk: Path) -> int:
    """Byte offset of the disk's first partition (sfdisk --json, MBR or GPT)."""
    proc = run(["sfdisk", "--json", disk])
    try:
        table = json.loads(proc.stdout)["partitiontable"]
        partitions = table["partitions"]
        sector = int(table.get("sectorsize", 512))
    except (ValueError, KeyError, TypeError) as exc:
        raise LabError(f"cannot read the partition table of {disk}: {exc}") from exc
    if not partitions:
        raise LabError(f"{disk} has no partitions; expected a FAT first partition")
    return int(partitions[0]["start"]) * sector


def _image(disk: Path, offset: int) -> str:
    return f"{disk}@@{offset}"


def extract(disk: Path, member: str, dest: Path) -> bool:
    """Copy ``member`` out of the first partition to ``dest``; False if it is not there."""
    image = _image(disk, first_partition_offset(disk))
    tmp = dest.with_name(f".{dest.name}.tmp")
    proc = run(["mcopy", "-n", "-o", "-i", image, f"::/{member}", tmp], env=MTOOLS_ENV, check=False)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        return False
    os.replace(tmp, dest)
    return True


def set_kernel_args(disk: Path, args: tuple[str, ...]) -> None:
    """Set the extra kernel arguments of the command line the boot script builds
    (fleet_bootargs in partition 1's fleet/uboot-board.txt), none for ``()``: what an
    emulated board needs that a real one does not, so the image itself stays the one a
    real board gets."""
    from fleet.image.bootscript import BOARD_FILE

    image = _image(disk, first_partition_offset(disk))
    proc = run(["mtype", "-i", image, f"::/{BOARD_FILE}"], env=MTOOLS_ENV, check=False)
    if proc.returncode != 0:
        return  # not fleet's boot script (another image): its command line is its own
    old = proc.stdout.decode().splitlines()
    lines = [line for line in old if not line.startswith("fleet_bootargs=")]
    if args:
        lines.append("fleet_bootargs=" + " ".join(args))
    if lines == old:
        return
    folder = Path(tempfile.mkdtemp(prefix="fleet-lab-"))
    try:
        staged = folder / "uboot-board.txt"
        staged.write_text("\n".join(lines) + "\n")
        run(["mcopy", "-o", "-i", image, staged, f"::/{BOARD_FILE}"], env=MTOOLS_ENV)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def remove_tree(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
