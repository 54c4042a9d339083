"""The board's kernel from Debian's package: the Image, the device tree, and only the
modules the board needs, in an order in which each one's dependencies come first."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from fleet.errors import BuildError

_DEPENDS = re.compile(rb"(?:^|\x00)depends=([^\x00]*)\x00")


@dataclass(frozen=True)
class KernelTree:
    version: str
    image: Path
    modules_root: Path  # .../lib/modules/VERSION
    dtb_root: Path  # .../usr/lib/linux-image-VERSION

    def dtb(self, relative: str) -> Path:
        path = self.dtb_root / relative
        if not path.is_file():
            raise BuildError(f"device tree {relative} is not in kernel {self.version}")
        return path


def find_kernel(package_root: Path) -> KernelTree:
    """Locate the kernel inside the extracted linux-image-VERSION package."""
    images = sorted((package_root / "boot").glob("vmlinuz-*"))
    if len(images) != 1:
        raise BuildError(f"expected one kernel image in {package_root}/boot, found {len(images)}")
    version = images[0].name.removeprefix("vmlinuz-")
    return KernelTree(
        version=version,
        image=images[0],
        modules_root=package_root / "lib/modules" / version,
        dtb_root=package_root / "usr/lib" / f"linux-image-{version}",
    )


def _canonical(name: str) -> str:
    return name.replace("-", "_")


def module_index(kernel: KernelTree) -> dict[str, Path]:
    index = {}
    for path in sorted(kernel.modules_root.rglob("*.ko")):
        index[_canonical(path.stem)] = path
    return index


def builtin_modules(kernel: KernelTree) -> set[str]:
    builtin = kernel.modules_root / "modules.builtin"
    if not builtin.exists():
        return set()
    return {_canonical(Path(line).stem) for line in builtin.read_text().split()}


def module_depends(path: Path) -> list[str]:
    # The .modinfo section holds NUL-separated key=value strings; "depends=" lists the
    # modules whose symbols this one uses.
    match = _DEPENDS.search(path.read_bytes())
    if not match or not match.group(1):
        return []
    return [_canonical(d) for d in match.group(1).decode().split(",") if d]


def resolve_modules(kernel: KernelTree, names: tuple[str, ...] | list[str]) -> list[Path]:
    """The .ko files for ``names`` and their dependencies, dependencies first.

    A name that is built into the kernel needs no file; an unknown name is an error.
    """
    index = module_index(kernel)
    builtin = builtin_modules(kernel)
    ordered: list[Path] = []
    done: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        key = _canonical(name)
        if key in done:
            return
        if key in chain:
            raise BuildError(f"kernel modules depend on each other in a loop: {' -> '.join(chain)}")
        if key not in index:
            if key in builtin:
                done.add(key)
                return
            raise BuildError(f"kernel module {name!r} is not in kernel {kernel.version}")
        for dep in module_depends(index[key]):
            visit(dep, (*chain, key))
        done.add(key)
        ordered.append(index[key])

    for name in names:
        visit(name, ())
    return ordered


# Raspberry Pi's kernel turns `reboot "0 tryboot"` into the firmware's one-shot trial
# flag: its drivers/firmware/raspberrypi.c compares the reboot argument with "tryboot"
# and sends the SET_REBOOT_FLAGS mailbox tag. Mainline Linux (Debian's linux-image-arm64)
# only notifies the firmware of a reboot and drops the argument; its kernel holds no
# such string.
TRYBOOT_TOKEN = b"tryboot\x00"
FIRMWARE_DRIVER = "raspberrypi"


def passes_tryboot(kernel: KernelTree) -> bool:
    """Whether this kernel hands the reboot argument "tryboot" to the Pi firmware: the
    string is in the Image itself or in its firmware driver module."""
    if TRYBOOT_TOKEN in _image_bytes(kernel.image):
        return True
    driver = module_index(kernel).get(FIRMWARE_DRIVER)
    return driver is not None and TRYBOOT_TOKEN in driver.read_bytes()


def _image_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":  # a gzip'd Image (arm64 kernels do not unpack themselves)
        import gzip

        return gzip.decompress(data)
    return data
