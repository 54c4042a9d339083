"""The slot payloads as filesystem images: a FAT boot partition and a squashfs root.
Both are made reproducible: fixed times, owners, volume ids and file order."""

from __future__ import annotations

import os
from pathlib import Path

from fleet.run import run

MIB = 1 << 20
FAT_VOLUME_ID = "0x464c4554"  # "FLET": fixed, so the same files give the same image


# What changes from one release of an app to the next, laid out last in the image: a
# changed app then moves no other file's data, so the dm-verity hash tree above that data
# stays the same too (docs/delta.md: with no fragments, a one-line change's rootfs delta
# went from 46 KB to 6 KB).
LAST_IN_IMAGE = ("app", "etc/fleet")


def make_squashfs(staging: Path, output: Path, mtime: int) -> None:
    if output.exists():
        output.unlink()
    sort = staging.with_name(staging.name + ".sort")
    sort.write_text("".join(f"{rel} -32768\n" for rel in LAST_IN_IMAGE if (staging / rel).exists()))
    run(
        [
            "mksquashfs",
            staging,
            output,
            "-noappend",
            # zstd, not xz: about 14% larger, but the board reads its root through it at
            # every exec; zstd decompresses several times faster (docs/images.md, boot).
            "-comp",
            "zstd",
            "-Xcompression-level",
            "19",
            "-b",
            "256K",
            # No fragment blocks: the tails of small files packed together moved with
            # any change to one of them; 0.5% more image (docs/delta.md).
            "-no-fragments",
            "-sort",
            sort,
            "-all-root",
            "-no-xattrs",
            "-no-progress",
            "-quiet",
        ],
        # mksquashfs takes SOURCE_DATE_EPOCH for every inode time and the mkfs time (and
        # refuses it together with -all-time), so it is the one knob used.
        env={"SOURCE_DATE_EPOCH": str(mtime)},
    )
    sort.unlink()


def fat_size_for(files: dict[str, Path]) -> int:
    """The smallest FAT image, in 64 KiB steps, that holds ``files``: cluster rounding
    per file plus room for the FAT tables and directories. Every byte of it is sent in
    an update, so it is not rounded up to whole MiB."""
    cluster = 4096
    step = 64 * 1024
    content = sum(-(-p.stat().st_size // cluster) * cluster for p in files.values())
    size = content + content // 256 + 256 * 1024
    return -(-size // step) * step


def make_fat(
    output: Path, files: dict[str, Path], label: str, mtime: int, size: int | None = None
) -> None:
    """A FAT image holding ``files`` (name on the image -> source), names may use '/'."""
    size = size or fat_size_for(files)
    if output.exists():
        output.unlink()
    run(
        [
            "mkfs.vfat",
            "--invariant",
            "-i",
            FAT_VOLUME_ID,
            "-n",
            label,
            "-C",
            output,
            str(size // 1024),
        ],
        env={"SOURCE_DATE_EPOCH": str(mtime)},
    )
    folders = sorted({str(Path(n).parent) for n in files if "/" in n})
    for folder in folders:
        parts = Path(folder).parts
        for depth in range(1, len(parts) + 1):
            sub = "/".join(parts[:depth])
            run(
                ["mmd", "-D", "s", "-i", output, f"::{sub}"],
                check=False,
                env={"SOURCE_DATE_EPOCH": str(mtime)},
            )
    for name in sorted(files):
        source = files[name]
        os.utime(source, (mtime, mtime))
        run(
            ["mcopy", "-m", "-o", "-i", output, source, f"::{name}"],
            env={"SOURCE_DATE_EPOCH": str(mtime)},
        )
