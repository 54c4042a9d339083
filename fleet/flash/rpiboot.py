"""The Raspberry Pi USB boot-ROM protocol (what ``rpiboot`` speaks), over pyusb.

A board held in USB boot mode (Compute Module with nRPIBOOT fitted, Zero, Pi 4/5 with
the boot button) enumerates as Broadcom 0a5c:2763/2764/2711/2712. The host then:

1. sends the *boot message* — a little-endian int32 length of the second stage and 20
   signature bytes (zeros unless secure boot) — and then the second stage itself
   (bootcode.bin, bootcode4.bin or bootcode5.bin), and reads back a 4-byte return code;
2. after the board re-enumerates running that second stage, serves files: the board
   asks with a 260-byte message (int32 command, 256-byte NUL-terminated name) read by
   a vendor control-IN transfer; command 0 GetFileSize is answered by a control-OUT
   whose wValue/wIndex carry the size (0: no such file), 1 ReadFile by the same
   control-OUT followed by the bytes over bulk OUT, 2 Done (or an empty name) ends it.

Every host-to-board write is announced by a vendor control-OUT (request 0) whose
wValue and wIndex hold the low and high 16 bits of the length. Serving the
mass-storage-gadget files this way turns the board's eMMC into a USB disk.
The file server never leaves its directory: names with ``..`` or a leading ``/`` are
answered as missing.
"""

from __future__ import annotations

import struct
import tarfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleet.errors import FlashError

VENDOR = 0x0A5C
SECOND_STAGE = {
    0x2763: "bootcode.bin",
    0x2764: "bootcode.bin",
    0x2711: "bootcode4.bin",
    0x2712: "bootcode5.bin",
}
# bootfiles.bin (the mass-storage-gadget bundle) keeps each chip's files in a folder.
CHIP_FOLDER = {0x2763: "2710", 0x2764: "2710", 0x2711: "2711", 0x2712: "2712"}
# The boot ROM reports string index 0 or 3 for iSerialNumber; a second stage, another.
ROM_SERIAL_INDEXES = (0, 3)
GET_FILE_SIZE, READ_FILE, DONE = 0, 1, 2
FILE_MESSAGE = struct.Struct("<i256s")
BOOT_MESSAGE = struct.Struct("<i20s")
CTRL_OUT = 0x40  # vendor, host to device
CTRL_IN = 0xC0  # vendor, device to host
BULK_CHUNK = 16 * 1024
CTRL_TIMEOUT_MS = 1000
BULK_TIMEOUT_MS = 5000
READ_TIMEOUT_MS = 3000

Finder = Callable[[], Iterable[Any]]


@dataclass(frozen=True)
class BootRomBoard:
    path: str  # USB path as rpiboot -p and sysfs name it, e.g. 1-1.3
    serial: str
    product: int
    stage: str  # "rom" or "second-stage"

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "serial": self.serial,
            "usb_id": f"{VENDOR:04x}:{self.product:04x}",
            "stage": self.stage,
        }


def usb_path(device: Any) -> str:
    ports = getattr(device, "port_numbers", None) or ()
    return f"{device.bus}-{'.'.join(str(p) for p in ports)}" if ports else str(device.bus)


def _serial(device: Any) -> str:
    try:
        return str(device.serial_number or "")
    except (ValueError, NotImplementedError, OSError):
        return ""
    except Exception:  # usb.core.USBError without importing usb here
        return ""


def default_finder() -> Iterable[Any]:
    """Raspberry Pi boot-ROM devices on the host's USB buses; none when pyusb has no
    libusb backend or the host has no USB (a container, a build machine)."""
    try:
        import usb.core

        found = usb.core.find(find_all=True, idVendor=VENDOR)
        return [d for d in found if d.idProduct in SECOND_STAGE]
    except Exception:  # usb.core.NoBackendError, USBError, missing /dev/bus/usb
        return []


def list_boards(finder: Finder = default_finder) -> list[BootRomBoard]:
    boards = []
    for device in finder():
        if device.idVendor != VENDOR or device.idProduct not in SECOND_STAGE:
            continue
        stage = "rom" if device.iSerialNumber in ROM_SERIAL_INDEXES else "second-stage"
        boards.append(BootRomBoard(usb_path(device), _serial(device), device.idProduct, stage))
    return boards


# ----------------------------------------------------------------------- boot files


class BootFiles:
    """The files a board may ask for: a folder, optionally with bootfiles.bin in it
    (then ``<folder>/<chip>/<name>`` overrides the bundle's ``<chip>/<name>``)."""

    def __init__(self, folder: Path) -> None:
        if not folder.is_dir():
            raise FlashError(f"rpiboot files folder {folder} does not exist")
        self.folder = folder
        bundle = folder / "bootfiles.bin"
        self.bundle: dict[str, bytes] = {}
        if bundle.is_file():
            with tarfile.open(bundle) as tar:
                for member in tar.getmembers():
                    handle = tar.extractfile(member) if member.isfile() else None
                    if handle is not None:
                        self.bundle[member.name.lstrip("./")] = handle.read()

    @staticmethod
    def allowed(name: str) -> bool:
        return bool(name) and ".." not in name and not name.startswith(("/", "\\"))

    def read(self, name: str, product: int) -> bytes | None:
        """The file's bytes, or None when it is missing or not allowed."""
        if not self.allowed(name):
            return None
        chip = CHIP_FOLDER[product]
        for path in (self.folder / chip / name, self.folder / name):
            if path.is_file() and path.resolve().is_relative_to(self.folder.resolve()):
                return path.read_bytes()
        return self.bundle.get(f"{chip}/{name}")


# ------------------------------------------------------------------------ transfers


class Link:
    """The rpiboot framing over one open pyusb device."""

    def __init__(self, device: Any) -> None:
        self.device = device
        config = device.get_active_configuration()
        # A 2837 may enumerate with a mass-storage interface first; the vendor
        # interface is then the second one, with bulk OUT endpoint 3.
        self.out_ep = 0x01 if config.bNumInterfaces == 1 else 0x03

    def announce(self, length: int) -> None:
        self.device.ctrl_transfer(
            CTRL_OUT, 0, length & 0xFFFF, length >> 16, None, timeout=CTRL_TIMEOUT_MS
        )

    def send(self, data: bytes) -> None:
        self.announce(len(data))
        view = memoryview(data)
        sent = 0
        while sent < len(view):
            n = self.device.write(
                self.out_ep, view[sent : sent + BULK_CHUNK], timeout=BULK_TIMEOUT_MS
            )
            if n <= 0:
                raise FlashError(f"board stopped taking data after {sent} bytes")
            sent += n

    def receive(self, length: int, timeout_ms: int = READ_TIMEOUT_MS) -> bytes:
        data = self.device.ctrl_transfer(
            CTRL_IN, 0, length & 0xFFFF, length >> 16, length, timeout=timeout_ms
        )
        return bytes(data)


def send_second_stage(link: Link, code: bytes, signature: bytes = b"\0" * 20) -> None:
    link.send(BOOT_MESSAGE.pack(len(code), signature))
    link.send(code)
    reply = link.receive(4)
    if len(reply) != 4 or struct.unpack("<i", reply)[0] != 0:
        raise FlashError(f"the boot ROM refused the second stage (reply {reply.hex() or 'none'})")


def serve_files(link: Link, files: BootFiles, product: int, max_requests: int = 10000) -> list[str]:
    """Answer the second stage's requests until Done; return the names served."""
    served: list[str] = []
    pending: bytes | None = None
    for _ in range(max_requests):
        raw = link.receive(FILE_MESSAGE.size)
        if len(raw) < FILE_MESSAGE.size:
            raise FlashError("the board sent a short file-server message")
        command, name_bytes = FILE_MESSAGE.unpack(raw)
        name = name_bytes.split(b"\0", 1)[0].decode("latin-1")
        if not name:  # an empty name also means done
            link.announce(0)
            return served
        if name.startswith("*"):  # metadata the board reports; acknowledged, not kept
            link.announce(0)
            continue
        if command == GET_FILE_SIZE:
            pending = files.read(name, product)
            link.announce(len(pending) if pending is not None else 0)
        elif command == READ_FILE:
            data = pending if pending is not None else files.read(name, product)
            pending = None
            if data is None:
                link.announce(0)
            else:
                link.send(data)
                served.append(name)
        elif command == DONE:
            return served
        else:
            raise FlashError(f"the board sent an unknown file-server command {command}")
    raise FlashError("the board never said Done")


# --------------------------------------------------------------------------- driver


def _select(boards: list[Any], path: str | None, serial: str | None) -> Any | None:
    matches = [
        d
        for d in boards
        if (path is None or usb_path(d) == path) and (serial is None or _serial(d) == serial)
    ]
    if len(matches) > 1 and path is None and serial is None:
        names = ", ".join(usb_path(d) for d in matches)
        raise FlashError(f"several boards in USB boot mode ({names}): pick one with --usb-path")
    return matches[0] if matches else None


def boot(
    files: BootFiles,
    *,
    path: str | None = None,
    serial: str | None = None,
    timeout: float = 30.0,
    finder: Finder = default_finder,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    log: Callable[[str], None] = lambda _m: None,
) -> list[str]:
    """Take one board from its boot ROM to the served second stage; return the files
    it loaded. Gives up after ``timeout`` seconds when the board never shows up."""
    deadline = clock() + timeout
    wanted = serial
    booted_rom = False
    chosen_path = path
    while clock() < deadline:
        device = _select(list(finder()), chosen_path, serial)
        if device is None:
            sleep(0.2)
            continue
        # Follow this board by its port through re-enumeration; its serial may change.
        chosen_path, serial = usb_path(device), None
        product = device.idProduct
        link = Link(device)
        if device.iSerialNumber in ROM_SERIAL_INDEXES:
            if booted_rom:
                sleep(0.2)  # still the ROM's old enumeration; wait for the new one
                continue
            name = SECOND_STAGE[product]
            code = files.read(name, product)
            if code is None:
                raise FlashError(f"{name} is missing from {files.folder}")
            log(f"sending {name} ({len(code)} bytes) to the board at USB path {chosen_path}")
            send_second_stage(link, code)
            booted_rom = True
            sleep(1.0)
            continue
        log(f"serving files to the board at USB path {chosen_path}")
        return serve_files(link, files, product)
    who = f"USB path {path}" if path else f"serial {wanted}" if wanted else "any USB port"
    raise FlashError(f"no Raspberry Pi in USB boot mode answered on {who} within {timeout:g} s")
