"""Board profiles: data, not code. One TOML file per board in ``boards/``.

A profile says what a board is (architecture, boot method, disk layout, bootloader,
kernel and modules, console, watchdog, USB ids) and, for virtual boards, how QEMU
emulates it. Loading validates every field and names the file and field on error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from fleet import data_dir
from fleet.errors import ConfigError
from fleet.schema import Table, load_toml

ARCHES = ("aarch64", "armhf")
BOOT_METHODS = ("uboot-ab", "rpi-tryboot")
DEBIAN_ARCH = {"aarch64": "arm64", "armhf": "armhf"}
ELF_MACHINE = {"aarch64": "AArch64", "armhf": "ARM"}


@dataclass(frozen=True)
class Kernel:
    package: str
    dtb: str | None  # path inside the kernel package's dtb folder, e.g. broadcom/x.dtb
    cmdline: str
    boot_modules: tuple[str, ...]  # loaded by the initramfs to reach the rootfs
    modules: tuple[str, ...]  # loaded by the system (network, watchdog, ...)


@dataclass(frozen=True)
class Bootloader:
    package: str
    file: str  # path inside the package
    install: str  # "qemu-bios", "qemu-kernel" or "file:NAME" (copied onto the boot partition)
    env: tuple[str, ...]  # NAME=VALUE set by the boot script first (load addresses)
    # U-Boot environment file written onto partition 1 ("" = none; then U-Boot runs its
    # built-in default environment), and the size U-Boot was built with (CONFIG_ENV_SIZE).
    saved_env: str = ""
    saved_env_size: int = 0


@dataclass(frozen=True)
class Firmware:
    package: str
    files: tuple[str, ...]
    required: bool


@dataclass(frozen=True)
class Storage:
    linux_disk: str  # the board's disk as Linux names it, e.g. /dev/vda or /dev/mmcblk0
    partition_prefix: str  # between disk and partition number: "" for vda, "p" for mmcblk0
    uboot_disk: str  # the disk as U-Boot names it, e.g. "virtio 0" or "mmc 0"
    firmware_mib: int
    slot_boot_mib: int
    slot_root_mib: int
    data_mib: int

    def partition(self, number: int) -> str:
        return f"{self.linux_disk}{self.partition_prefix}{number}"


@dataclass(frozen=True)
class Network:
    interface: str
    modules: tuple[str, ...]
    # What the netboot initramfs loads to reach the network (with their dependencies):
    # the NIC's driver, and a USB NIC's host controller, which no driver depends on.
    netboot_modules: tuple[str, ...] = ()


@dataclass(frozen=True)
class Wifi:
    """A board's WiFi: the driver, its firmware and the client (wpa_supplicant), carried
    by the image when the board needs it (``default``) or its project asks for it."""

    interface: str
    modules: tuple[str, ...]
    firmware_package: str | None
    firmware: tuple[str, ...]  # paths inside firmware_package
    # Why the chip's firmware is not carried (no Debian suite ships it), or None.
    firmware_missing: str | None
    default: bool


@dataclass(frozen=True)
class Gadget:
    """Ethernet over the board's USB device port (a USB network gadget)."""

    interface: str
    modules: tuple[str, ...]


@dataclass(frozen=True)
class Qemu:
    machine: str
    cpu: str | None
    memory_mib: int
    loader: str  # "bios" (-bios u-boot.bin) or "kernel" (-kernel u-boot.bin)
    disk: str  # "virtio" or "sd"
    net: str  # "virtio" or "usb-net"
    extra: tuple[str, ...]
    # Kernel arguments the emulated board needs and a real one does not (fleet_bootargs
    # in its fleet/uboot-board.txt, written by `fleet lab up`).
    kernel_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class BoardProfile:
    name: str
    description: str
    arch: str
    virtual: bool
    boot_method: str
    console: str
    baud: int
    kernel: Kernel
    bootloader: Bootloader | None  # None: the board's own firmware loads the kernel
    firmware: Firmware | None
    storage: Storage
    network: Network
    watchdog_module: str | None
    usb_ids: tuple[str, ...]
    qemu: Qemu | None
    source: Path
    # Why this board cannot boot fleet's images (None: it can): `fleet boards` lists it
    # as unsupported and `fleet build` refuses it with the reason.
    unsupported: str | None = None
    wifi: Wifi | None = None
    gadget: Gadget | None = None

    @property
    def debian_arch(self) -> str:
        return DEBIAN_ARCH[self.arch]


def boards_dir() -> Path:
    return Path(os.environ.get("FLEET_BOARDS_DIR", data_dir("boards")))


def load_profile(path: Path) -> BoardProfile:
    top = Table(load_toml(path), str(_display(path)))
    name = top.str("name")
    if name != path.stem:
        raise top.error("name", f"must match the file name {path.stem!r}, got {name!r}")
    arch = top.choice("arch", ARCHES)
    boot = top.table("boot")
    kernel = top.table("kernel")
    storage = top.table("storage")
    network = top.table("network")
    profile = BoardProfile(
        name=name,
        description=top.str("description"),
        arch=arch,
        virtual=top.bool("virtual", default=False),
        unsupported=top.opt_str("unsupported"),
        boot_method=boot.choice("method", BOOT_METHODS),
        console=boot.str("console"),
        baud=boot.int("baud", default=115200, minimum=1200),
        kernel=Kernel(
            package=kernel.str("package"),
            dtb=kernel.opt_str("dtb"),
            cmdline=kernel.str("cmdline", default=" "),
            boot_modules=tuple(kernel.str_list("boot_modules")),
            modules=tuple(kernel.str_list("modules", default=[])),
        ),
        bootloader=_bootloader(top),
        firmware=_firmware(top),
        storage=Storage(
            linux_disk=storage.str("linux_disk"),
            partition_prefix=storage.str("partition_prefix", default=""),
            uboot_disk=storage.str("uboot_disk"),
            firmware_mib=storage.int("firmware_mib", minimum=4),
            slot_boot_mib=storage.int("slot_boot_mib", minimum=8),
            slot_root_mib=storage.int("slot_root_mib", minimum=8),
            data_mib=storage.int("data_mib", minimum=8),
        ),
        network=Network(
            interface=network.str("interface"),
            modules=tuple(network.str_list("modules", default=[])),
            netboot_modules=tuple(
                network.str_list("netboot_modules", default=network.str_list("modules", default=[]))
            ),
        ),
        watchdog_module=top.table("watchdog", required=False).opt_str("module"),
        usb_ids=tuple(_usb_ids(top)),
        qemu=_qemu(top),
        source=path,
        wifi=_wifi(top),
        gadget=_gadget(top),
    )
    for table in (top, boot, kernel, storage, network):
        table.reject_unknown()
    return profile


def _display(path: Path) -> Path:
    try:
        return path.resolve().relative_to(Path.cwd())
    except ValueError:
        return path


def _bootloader(top: Table) -> Bootloader | None:
    table = top.opt_table("bootloader")
    if table is None:
        return None
    env = table.str_list("env", default=[])
    for index, item in enumerate(env):
        name, sep, value = item.partition("=")
        if not sep or not name.replace("_", "").isalnum() or not value.replace("x", "").isalnum():
            raise table.error(f"env[{index}]", f"expected NAME=VALUE, got {item!r}")
    saved_env = table.str("saved_env", default="")
    saved_env_size = table.int("saved_env_size", default=0, minimum=0)
    if saved_env:
        if saved_env_size < 512:
            raise table.error("saved_env_size", "must be U-Boot's CONFIG_ENV_SIZE (at least 512)")
        if not any(item.startswith("scriptaddr=") for item in env):
            raise table.error("env", "saved_env needs scriptaddr=ADDRESS to load boot.scr at")
    loader = Bootloader(
        package=table.str("package"),
        file=table.str("file"),
        install=_install(table),
        env=tuple(env),
        saved_env=saved_env,
        saved_env_size=saved_env_size,
    )
    table.reject_unknown()
    return loader


def _install(loader: Table) -> str:
    value = loader.str("install")
    if value in ("qemu-bios", "qemu-kernel") or (value.startswith("file:") and len(value) > 5):
        return value
    raise loader.error("install", f"expected qemu-bios, qemu-kernel or file:NAME, got {value!r}")


def _firmware(top: Table) -> Firmware | None:
    table = top.opt_table("firmware")
    if table is None:
        return None
    firmware = Firmware(
        package=table.str("package"),
        files=tuple(table.str_list("files")),
        required=table.bool("required", default=True),
    )
    table.reject_unknown()
    return firmware


def _wifi(top: Table) -> Wifi | None:
    table = top.opt_table("wifi")
    if table is None:
        return None
    wifi = Wifi(
        interface=table.str("interface"),
        modules=tuple(table.str_list("modules")),
        firmware_package=table.opt_str("firmware_package"),
        firmware=tuple(table.str_list("firmware", default=[])),
        firmware_missing=table.opt_str("firmware_missing"),
        default=table.bool("default", default=False),
    )
    if wifi.firmware and wifi.firmware_package is None:
        raise table.error("firmware", "needs firmware_package, the package that holds them")
    table.reject_unknown()
    return wifi


def _gadget(top: Table) -> Gadget | None:
    table = top.opt_table("usb_gadget")
    if table is None:
        return None
    gadget = Gadget(interface=table.str("interface"), modules=tuple(table.str_list("modules")))
    table.reject_unknown()
    return gadget


def _usb_ids(top: Table) -> list[str]:
    table = top.table("usb", required=False)
    ids = table.str_list("ids", default=[])
    for index, usb_id in enumerate(ids):
        vendor, _, product = usb_id.partition(":")
        if len(vendor) != 4 or len(product) != 4 or not _is_hex(vendor + product):
            raise table.error(f"ids[{index}]", f"expected VVVV:PPPP in hex, got {usb_id!r}")
    table.reject_unknown()
    return [i.lower() for i in ids]


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdefABCDEF" for c in text)


def _qemu(top: Table) -> Qemu | None:
    table = top.opt_table("qemu")
    if table is None:
        return None
    qemu = Qemu(
        machine=table.str("machine"),
        cpu=table.opt_str("cpu"),
        memory_mib=table.int("memory_mib", minimum=64),
        loader=table.choice("loader", ("bios", "kernel")),
        disk=table.choice("disk", ("virtio", "sd")),
        net=table.choice("net", ("virtio", "usb-net")),
        extra=tuple(table.str_list("extra", default=[])),
        kernel_args=tuple(table.str_list("kernel_args", default=[])),
    )
    table.reject_unknown()
    return qemu


def all_profiles(directory: Path | None = None) -> list[BoardProfile]:
    folder = directory or boards_dir()
    paths = sorted(folder.glob("*.toml"))
    if not paths:
        # An empty list would read as "fleet supports no boards"; it is a broken install
        # or a wrong FLEET_BOARDS_DIR.
        raise ConfigError(f"no board profiles (*.toml) in {folder}")
    return [load_profile(path) for path in paths]


def get_profile(name: str, directory: Path | None = None) -> BoardProfile:
    folder = directory or boards_dir()
    path = folder / f"{name}.toml"
    if "/" in name or name.startswith(".") or not path.is_file():
        known = ", ".join(p.stem for p in sorted(folder.glob("*.toml")))
        raise ConfigError(f"unknown board {name!r} (known: {known})")
    return load_profile(path)
