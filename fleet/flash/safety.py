"""The checks that stand between an image and the wrong disk, and the exclusive open.

Every refusal happens before the device is opened for writing, and says that the
device was not changed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator

from fleet.errors import FlashError
from fleet.flash.discovery import BlockDevice, human_size
from fleet.run import run

_BLKRRPART = 0x125F  # ioctl: re-read the partition table
_NEVER = {"ram": "a RAM disk", "optical": "an optical drive", "virtual": "a virtual device"}


def check_target(
    device: BlockDevice,
    image_size: int | None,
    *,
    allow_system: bool | None,
    unmount: bool | None,
) -> None:
    """Raise FlashError when ``device`` must not receive an image of ``image_size``
    (None: only settings are written, no image). ``allow_system`` and ``unmount`` are
    None for a command that has no such option: the refusal then offers none."""
    untouched = f"{device.node} was not changed"
    if device.kind in _NEVER:
        raise FlashError(f"{device.node} is {_NEVER[device.kind]}, not a board or card")
    if device.read_only:
        raise FlashError(f"{device.node} is read-only (write-protect switch?); {untouched}")
    if device.size == 0:
        raise FlashError(f"{device.node} has no medium (size 0); {untouched}")
    if device.system and not allow_system:
        how = (
            "If you really mean it, pass --allow-system-drive and type its name when asked"
            if allow_system is not None
            else untouched
        )
        raise FlashError(
            f"{device.node} is a system drive ({device.system_reason}); refusing to "
            f"overwrite it. {how}"
        )
    if image_size is not None and device.size < image_size:
        raise FlashError(
            f"{device.node} is too small: the image needs {image_size} bytes "
            f"({human_size(image_size)}), the device has {device.size} "
            f"({human_size(device.size)}); {untouched}"
        )
    if device.swap:
        raise FlashError(f"{device.node} holds active swap ({', '.join(device.swap)}); {untouched}")
    if device.mounts and not unmount:
        where = "; ".join(f"{node} on {', '.join(t)}" for node, t in device.mounts.items())
        how = "unmount it or pass --unmount" if unmount is not None else "unmount it first"
        raise FlashError(f"{device.node} is mounted ({where}); {how}; {untouched}")


def unmount_all(device: BlockDevice) -> list[str]:
    """Unmount every mount point on the device, deepest first; return what was unmounted."""
    targets = sorted(
        (t for ts in device.mounts.values() for t in ts), key=lambda t: t.count("/"), reverse=True
    )
    for target in targets:
        run(["umount", target])
    return targets


def open_exclusive(device: BlockDevice) -> tuple[int, int]:
    """Open the device for writing with O_EXCL (the kernel then refuses mounts and other
    exclusive users while fleet holds it); return (fd, size in bytes)."""
    try:
        fd = os.open(device.node, os.O_WRONLY | os.O_EXCL | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            raise FlashError(
                f"{device.node} is busy (mounted or held by another program); "
                f"{device.node} was not changed"
            ) from exc
        raise FlashError(f"cannot open {device.node}: {exc.strerror}; it was not changed") from exc
    size = os.lseek(fd, 0, os.SEEK_END)
    return fd, size


@contextlib.contextmanager
def exclusive(device: BlockDevice) -> Iterator[tuple[int, int]]:
    """The device held with O_EXCL, as (fd, size), until the block ends: every write of
    one command (the image, then the board's settings) happens inside it, so that no
    automounter or other program can step in between them."""
    fd, size = open_exclusive(device)
    try:
        yield fd, size
    finally:
        close_device(fd)


def close_device(fd: int) -> None:
    """Close the device after asking the kernel to read its new partition table."""
    with contextlib.suppress(OSError):  # loop devices without partscan say EINVAL
        fcntl.ioctl(fd, _BLKRRPART)
    os.close(fd)
