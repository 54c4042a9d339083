"""The settings written into, and read from, the ``fleet/`` folder of partition 1 (FAT)
of a disk image or a whole-disk block device, through mtools.

A block device is held open with O_EXCL from before the first read of its partition
table until after the last write has been synced (by the caller, when it already holds
it, as ``fleet flash`` does from the image's first byte): the kernel then refuses a
mount, an automounter or a second flasher in between. mtools opens the device without
O_EXCL, so it still gets in."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from fleet.errors import FlashError, UsageError
from fleet.provision.settings import Settings
from fleet.run import run

MTOOLS_ENV = {"MTOOLS_SKIP_CHECK": "1", "MTOOLS_NO_VFAT": "0"}
FIRMWARE_PARTITION = 1


def firmware_offset(target: Path) -> int:
    """Byte offset of partition 1 on a disk image file or a whole-disk block device."""
    proc = run(["sfdisk", "--json", target], check=False)
    if proc.returncode != 0:
        raise UsageError(f"{target}: no partition table with a first partition")
    try:
        table = json.loads(proc.stdout)["partitiontable"]
        sector = int(table.get("sectorsize", 512))
        first = table["partitions"][0]
        start = int(first["start"]) * sector
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise UsageError(f"{target}: no partition table with a first partition") from exc
    if not str(first["node"]).endswith("1"):
        raise UsageError(f"{target}: partition 1 is missing")
    return start


def _mtools(tool: str, image: str, *args: str | Path, check: bool = True) -> bool:
    proc = run([tool, "-i", image, *args], env=MTOOLS_ENV, check=check)
    return proc.returncode == 0


def write(target: Path, settings: Settings, *, held_fd: int | None = None) -> None:
    """Write ``settings`` into partition 1's ``fleet/`` folder of ``target`` (an image
    file or a block device), replacing earlier settings of the same kind. ``held_fd``:
    the caller already holds the block device with O_EXCL (see the module's note).

    Every value was checked when ``settings`` was made, and everything is staged in a
    temporary folder first, so a bad input never leaves a card half-provisioned. FAT
    has no atomic rename-over; the config files go in as a new folder that replaces
    the old one by two renames, so a cut leaves either folder complete."""
    if not target.exists():
        raise UsageError(f"{target}: no such disk image or device")
    with tempfile.TemporaryDirectory(prefix="fleet-provision-") as tmp:
        stage = Path(tmp)
        singles = _stage(settings, stage)
        with _held(target, held_fd) as fd:
            _write_staged(target, settings, stage, singles)
            if fd is None:
                _sync(target)
            else:
                os.fsync(fd)


def _stage(settings: Settings, stage: Path) -> list[str]:
    """Write the files into ``stage``; return the names of the single files."""
    singles: dict[str, str] = {}
    if settings.hostname is not None:
        singles["hostname"] = settings.hostname + "\n"
    if settings.authorized_keys:
        singles["authorized_keys"] = "\n".join(settings.authorized_keys) + "\n"
    if settings.shell_keys:
        singles["shell_keys"] = "\n".join(settings.shell_keys) + "\n"
    if settings.network is not None:
        singles["network"] = settings.network.render()
    if settings.recreate_data:
        singles["data-recreate"] = "requested by fleet provisioning\n"
    if settings.wifi is not None:
        singles["wifi"] = settings.wifi.render()
    if settings.pull is not None:
        singles["pull"] = settings.pull.render()
    for name, text in singles.items():
        (stage / name).write_text(text)
    if settings.files is not None:
        files = stage / "files.new"
        files.mkdir()
        for f in settings.files:
            dest = files.joinpath(*f.dest.parts)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(f.data)
    return list(singles)


def _write_staged(target: Path, settings: Settings, stage: Path, singles: list[str]) -> None:
    image = f"{target}@@{firmware_offset(target)}"
    if not _mtools("mdir", image, "-b", "::/", check=False):
        raise UsageError(f"{target}: partition 1 is not a FAT filesystem")
    if not _mtools("mdir", image, "-b", "::/fleet", check=False):
        _mtools("mmd", image, "::/fleet")
    for name in singles:
        _mtools("mcopy", image, "-o", "-D", "o", stage / name, f"::/fleet/{name}")
    if settings.files is not None:
        for stale in ("files.new", "files.old"):
            _mtools("mdeltree", image, f"::/fleet/{stale}", check=False)
        _mtools("mcopy", image, "-s", "-D", "o", stage / "files.new", "::/fleet/")
        if settings.files == ():
            _mtools("mmd", image, "::/fleet/files.new", check=False)
        had_old = _mtools("mren", image, "::/fleet/files", "::/fleet/files.old", check=False)
        _mtools("mren", image, "::/fleet/files.new", "::/fleet/files")
        if had_old:
            _mtools("mdeltree", image, "::/fleet/files.old")


@contextlib.contextmanager
def _held(target: Path, held_fd: int | None) -> Iterator[int | None]:
    """The block device held with O_EXCL (the caller's fd, or one opened here); None
    for an image file, which no automounter takes."""
    if held_fd is not None or not stat.S_ISBLK(target.stat().st_mode):
        yield held_fd
        return
    try:
        fd = os.open(target, os.O_WRONLY | os.O_EXCL | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            raise FlashError(
                f"{target} is busy (mounted or held by another program); {target} was not changed"
            ) from exc
        raise FlashError(f"cannot open {target}: {exc.strerror}; it was not changed") from exc
    try:
        yield fd
    finally:
        os.close(fd)


def _sync(target: Path) -> None:
    fd = os.open(target, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read(target: Path, member: str) -> bytes | None:
    """One file from partition 1 (``fleet/hostname`` etc.), or None if it is absent."""
    image = f"{target}@@{firmware_offset(target)}"
    proc = run(["mtype", "-i", image, f"::/{member}"], env=MTOOLS_ENV, check=False)
    return proc.stdout if proc.returncode == 0 else None


def listing(target: Path, folder: str = "fleet") -> list[str]:
    """Paths of the files under ``folder`` on partition 1 (for checks and tests)."""
    image = f"{target}@@{firmware_offset(target)}"
    proc = run(["mdir", "-i", image, "-/", "-b", f"::/{folder}"], env=MTOOLS_ENV, check=False)
    if proc.returncode != 0:
        return []
    names = [line.strip() for line in proc.stdout.decode().splitlines() if line.strip()]
    return sorted(n.removeprefix("::/") for n in names if not n.endswith("/"))
