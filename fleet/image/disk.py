"""The disk image a fresh board is flashed with: an MBR partition table, partition 1
(FAT: bootloader, boot script, boot state, provisioning settings), slot A filled with
the release, slot B empty, and an empty data partition (fleet.image.datafs).

    p1 firmware  FAT   p2 boot A  FAT   p3 boot B  FAT   p4 extended:
                                                       p5 rootfs A  squashfs
                                                       p6 rootfs B
                                                       p7 data      ext4, empty
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from fleet.boards import BoardProfile
from fleet.errors import BuildError
from fleet.run import run

MIB = 1 << 20
SECTOR = 512
DISK_LABEL_ID = "0x464c4554"  # fixed, so the same release gives the same image
SLOT_PARTITIONS = {"A": {"boot": 2, "rootfs": 5}, "B": {"boot": 3, "rootfs": 6}}
FIRMWARE_PARTITION = 1
DATA_PARTITION = 7


@dataclass(frozen=True)
class Partition:
    number: int
    start: int  # bytes
    size: int  # bytes


def layout_script(profile: BoardProfile) -> str:
    s = profile.storage
    mib_sectors = MIB // SECTOR
    lines = [
        "label: dos",
        f"label-id: {DISK_LABEL_ID}",
        "unit: sectors",
        "",
        f"start={mib_sectors}, size={s.firmware_mib * mib_sectors}, type=c, bootable",
        f"size={s.slot_boot_mib * mib_sectors}, type=c",
        f"size={s.slot_boot_mib * mib_sectors}, type=c",
        "type=5",
        f"size={s.slot_root_mib * mib_sectors}, type=83",
        f"size={s.slot_root_mib * mib_sectors}, type=83",
        f"size={s.data_mib * mib_sectors}, type=83",
    ]
    return "\n".join(lines) + "\n"


def disk_size(profile: BoardProfile) -> int:
    s = profile.storage
    # 1 MiB before p1, and 1 MiB before each logical partition for its EBR and alignment.
    used = 1 + s.firmware_mib + 2 * s.slot_boot_mib + 3 + 2 * s.slot_root_mib + s.data_mib
    size = (used + 1) * MIB
    if profile.qemu is not None and profile.qemu.disk == "sd":
        # QEMU's SD card model only takes power-of-two sizes.
        size = 1 << (size - 1).bit_length()
    return size


def read_partitions(image: Path) -> dict[int, Partition]:
    """Partition number -> byte range, from the image's own partition table."""
    proc = run(["sfdisk", "--json", image])
    try:
        table = json.loads(proc.stdout)["partitiontable"]
        sector = int(table.get("sectorsize", SECTOR))
        parts = {}
        for entry in table["partitions"]:
            number = int(str(entry["node"]).rsplit(str(image.name), 1)[-1])
            parts[number] = Partition(
                number, int(entry["start"]) * sector, int(entry["size"]) * sector
            )
    except (KeyError, ValueError, json.JSONDecodeError) as exc:
        raise BuildError(f"{image}: cannot read its partition table: {exc}") from exc
    return parts


def write_into(image: Path, partition: Partition, payload: Path) -> None:
    """Copy ``payload`` into the partition, leaving all-zero blocks as holes."""
    size = payload.stat().st_size
    if size > partition.size:
        raise BuildError(
            f"{payload.name} is {size // MIB} MiB but partition {partition.number} holds "
            f"{partition.size // MIB} MiB; raise the size in the board profile"
        )
    block = 1 << 16
    zero = bytes(block)
    with payload.open("rb") as src, image.open("r+b") as dst:
        offset = 0
        while chunk := src.read(block):
            if chunk != zero[: len(chunk)]:
                os.pwrite(dst.fileno(), chunk, partition.start + offset)
            offset += len(chunk)
        dst.flush()
        os.fsync(dst.fileno())


def make_disk(
    image: Path,
    profile: BoardProfile,
    firmware_fat: Path,
    boot_payload: Path,
    rootfs_payload: Path,
    data_fs: Path,
) -> dict[int, Partition]:
    tmp = image.with_name(f".{image.name}.tmp")
    if tmp.exists():
        tmp.unlink()
    with tmp.open("wb") as handle:
        handle.truncate(disk_size(profile))
    run(
        ["sfdisk", "--no-reread", "--no-tell-kernel", "--wipe", "always", "-q", tmp],
        input=layout_script(profile).encode(),
    )
    parts = read_partitions(tmp)
    if sorted(parts) != [1, 2, 3, 4, 5, 6, 7]:
        raise BuildError(f"unexpected partition layout: {sorted(parts)}")
    write_into(tmp, parts[FIRMWARE_PARTITION], firmware_fat)
    write_into(tmp, parts[SLOT_PARTITIONS["A"]["boot"]], boot_payload)
    write_into(tmp, parts[SLOT_PARTITIONS["A"]["rootfs"]], rootfs_payload)
    write_into(tmp, parts[DATA_PARTITION], data_fs)
    os.replace(tmp, image)
    return parts
