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

Boards are slow and flaky in ways usbboot learnt to live with, and fleet follows it
(raspberrypi/usbboot main.c at 87d6e03; line numbers below are of that version): it
waits before opening a board and before reading the ROM's status, sends the second
stage again to a board still in its ROM, reads requests patiently and again after a
failure, and takes a board leaving the bus after it has been served as the end. Unlike
usbboot it gives up after a bounded number of tries, and every failure, including
pyusb's own errors, ends as a one-line FlashError.
"""

from __future__ import annotations

import errno
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from fleet.errors import FlashError
from fleet.flash.rpiboot_files import BootFiles

VENDOR = 0x0A5C
SECOND_STAGE = {
    0x2763: "bootcode.bin",
    0x2764: "bootcode.bin",
    0x2711: "bootcode4.bin",
    0x2712: "bootcode5.bin",
}
# The boot ROM reports string index 0 or 3 for iSerialNumber; a second stage, another.
ROM_SERIAL_INDEXES = (0, 3)
GET_FILE_SIZE, READ_FILE, DONE = 0, 1, 2
FILE_MESSAGE = struct.Struct("<i256s")
BOOT_MESSAGE = struct.Struct("<i20s")
CTRL_OUT = 0x40  # vendor, host to device
CTRL_IN = 0xC0  # vendor, device to host
BULK_CHUNK = 16 * 1024
CTRL_TIMEOUT_MS = 1000  # ep_write's announcement
BULK_TIMEOUT_MS = 5000  # ep_write's bulk transfers
# ep_read (main.c 468-479) waits 20 s: raised from 3 s to 10 s in cb262fc (timeouts in
# manufacturing tests) and to 20 s in f0718be (metadata requests while a Pi 5 flashes).
READ_TIMEOUT_MS = 20000
# usbboot sleeps 1 s before libusb_open (open_device_with_vid, main.c 353-355) and
# before reading the ROM's status (second_stage_boot, 651); both came with ec9155c,
# "Fix problem with enabling MSD on some CM / CM3 devices".
SETTLE_S = 1.0
POLL_S = 0.2
# After a send, usbboot closes, sleeps 1 s, finds the board, sleeps 1 s and, if it is
# still in its ROM, sends again (main() 1064-1121: last_serial is reset each round, so
# the "re-enumerated" check never holds it back). fleet sends again at once to a ROM
# that has re-enumerated, and to the same enumeration after this long.
REENUMERATE_S = 2.0
MAX_SENDS = 3  # usbboot sends for ever
RETRY_S = 1.0  # file_server sleeps 1 s after a failed read (main.c 855)
MAX_BAD_READS = 3  # ... and reads again for ever; fleet stops after this many in a row

LIBUSB_ERROR_IO, LIBUSB_ERROR_ACCESS, LIBUSB_ERROR_NO_DEVICE = -1, -3, -4
LIBUSB_ERROR_TIMEOUT, LIBUSB_ERROR_PIPE = -7, -9
# pyusb's libusb1 backend sets both errno and backend_error_code; other backends put
# their own numbers in backend_error_code, so errno is read first.
_ERRNO_CODES = {
    errno.EIO: LIBUSB_ERROR_IO,
    errno.EACCES: LIBUSB_ERROR_ACCESS,
    errno.ENODEV: LIBUSB_ERROR_NO_DEVICE,
    errno.ETIMEDOUT: LIBUSB_ERROR_TIMEOUT,
    errno.EPIPE: LIBUSB_ERROR_PIPE,
}

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
    except (ValueError, NotImplementedError, OSError):  # usb.core.USBError is an OSError
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


# ------------------------------------------------------------------------ transfers


class UsbFailure(Exception):
    """A pyusb call failed; ``sent`` counts the bytes of a write that got through."""

    def __init__(self, err: OSError, sent: int = 0) -> None:
        code = _ERRNO_CODES.get(err.errno or 0, getattr(err, "backend_error_code", None))
        self.code = code if isinstance(code, int) else None
        self.detail = " ".join(str(err.strerror or err).split())
        self.sent = sent
        super().__init__(self.detail)

    @property
    def gone(self) -> bool:
        return self.code == LIBUSB_ERROR_NO_DEVICE


class Link:
    """The rpiboot framing over one open pyusb device; pyusb errors become UsbFailure."""

    def __init__(self, device: Any) -> None:
        self.device = device
        try:
            config = device.get_active_configuration()
            # Initialize_Device (main.c 408-429): a 2837 may enumerate with a
            # mass-storage interface first and the vendor one, OUT endpoint 3, second.
            # usbboot claims the interface it talks to before any transfer.
            self.interface = 0 if config.bNumInterfaces == 1 else 1
            self.out_ep = 0x01 if self.interface == 0 else 0x03
            import usb.util

            usb.util.claim_interface(device, self.interface)
        except OSError as err:
            raise UsbFailure(err) from err

    def close(self) -> None:
        # usbboot closes its handle after each stage; a board that has gone may refuse.
        try:
            import usb.util

            usb.util.dispose_resources(self.device)
        except (OSError, ImportError):
            pass

    def announce(self, length: int) -> None:
        try:
            self.device.ctrl_transfer(
                CTRL_OUT, 0, length & 0xFFFF, length >> 16, None, timeout=CTRL_TIMEOUT_MS
            )
        except OSError as err:
            raise UsbFailure(err) from err

    def send(self, data: bytes) -> None:
        self.announce(len(data))
        view = memoryview(data)
        sent = 0
        while sent < len(view):
            try:
                n = self.device.write(
                    self.out_ep, view[sent : sent + BULK_CHUNK], timeout=BULK_TIMEOUT_MS
                )
            except OSError as err:
                raise UsbFailure(err, sent) from err
            if n <= 0:
                raise FlashError(f"the board stopped taking data after {sent} bytes")
            sent += n

    def receive(self, length: int, timeout_ms: int = READ_TIMEOUT_MS) -> bytes:
        try:
            data = self.device.ctrl_transfer(
                CTRL_IN, 0, length & 0xFFFF, length >> 16, length, timeout=timeout_ms
            )
        except OSError as err:
            raise UsbFailure(err) from err
        return bytes(data)


def parse_request(raw: bytes) -> tuple[int, str] | None:
    """A file-server request's command and name, or None when the packet is too short
    to say. ep_read reports the full length for any transfer that succeeds (main.c
    475-478), so usbboot acts on a short packet as if it were whole: one that still
    holds the command and a NUL-terminated name means just that."""
    if len(raw) < 4:
        return None
    name = raw[4 : FILE_MESSAGE.size]
    if len(raw) < FILE_MESSAGE.size and b"\0" not in name:
        return None  # the name was cut off
    command = struct.unpack_from("<i", raw)[0]
    return command, name.split(b"\0", 1)[0].decode("latin-1")


def serve_files(
    link: Link,
    files: BootFiles,
    product: int,
    max_requests: int = 10000,
    *,
    sleep: Callable[[float], None] = time.sleep,
    log: Callable[[str], None] = lambda _m: None,
    present: Callable[[], bool] = lambda: True,
    board: str = "the board",
) -> list[str]:
    """Answer the second stage's requests until Done, or until the board leaves the
    bus between requests; return the names served. ``present`` says whether the board
    is still on the bus."""
    served: list[str] = []
    pending: bytes | None = None
    bad = 0  # failed or unusable reads in a row

    def give_up_if_bad(problem: str) -> None:
        if bad >= MAX_BAD_READS:
            after = f" after {served[-1]}" if served else ""
            raise FlashError(f"{board} stopped asking for files{after}: {problem}")

    for _ in range(max_requests):
        try:
            raw = link.receive(FILE_MESSAGE.size)
        except UsbFailure as failure:
            # file_server (main.c 849-857) ends when the board goes away (NO_DEVICE, or
            # IO, which Windows reports instead: 6623b99), else sleeps 1 s, reads again.
            if failure.gone or not present():
                log(f"{board} left the USB bus after {len(served)} files")
                return served
            bad += 1
            give_up_if_bad(f"{bad} reads in a row failed ({failure.detail})")
            sleep(RETRY_S)
            continue
        request = parse_request(raw)
        if request is None:
            bad += 1
            log(f"{board} sent a {len(raw)}-byte file-server request; reading again")
            give_up_if_bad(f"{bad} malformed file-server requests in a row")
            continue
        bad = 0
        command, name = request
        try:
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
                raise FlashError(f"{board} sent an unknown file-server command {command}")
        except UsbFailure as failure:
            if failure.gone or not present():
                raise FlashError(f"{board} left the USB bus while receiving {name}") from None
            raise FlashError(
                f"{board} stopped taking {name} after {failure.sent} bytes ({failure.detail})"
            ) from None
    raise FlashError(f"{board} never said Done")


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


class _Boot:
    """One board's way from its boot ROM to the end of the file server."""

    def __init__(
        self,
        files: BootFiles,
        path: str | None,
        serial: str | None,
        timeout: float,
        finder: Finder,
        clock: Callable[[], float],
        sleep: Callable[[float], None],
        log: Callable[[str], None],
    ) -> None:
        self.files, self.finder, self.log = files, finder, log
        self.clock, self.sleep = clock, sleep
        self.wanted_path, self.wanted_serial, self.timeout = path, serial, timeout
        self.deadline = clock() + timeout
        self.path, self.serial = path, serial
        self.seen = False
        self.code: tuple[str, bytes] | None = None  # the second stage, once looked up
        self.sends = 0
        self.sent_to: object = None  # the address of the ROM enumeration last sent to
        self.sent_at = 0.0
        self.left: tuple[float, str] | None = None  # when it dropped off mid-send, during
        self.problem: str | None = None  # the last thing that went wrong

    @property
    def board(self) -> str:
        return f"the board at USB path {self.path}"

    def run(self) -> list[str]:
        while self.clock() < self.deadline:
            device = _select(list(self.finder()), self.path, self.serial)
            if device is None:
                if self.left is not None and self.clock() - self.left[0] >= REENUMERATE_S:
                    raise FlashError(f"{self.board} left the USB bus while {self.left[1]}")
                self.sleep(POLL_S)
                continue
            self.left, self.seen = None, True
            # Follow this board by its port through re-enumeration; its serial may change.
            self.path, self.serial = usb_path(device), None
            in_rom = device.iSerialNumber in ROM_SERIAL_INDEXES
            if in_rom and not self._due(device):
                self.sleep(POLL_S)
                continue
            self.sleep(SETTLE_S)
            link = self._open(device)
            if link is None:
                self.sleep(POLL_S)
                continue
            try:
                if not in_rom:
                    self.log(f"serving files to {self.board}")
                    return serve_files(
                        link,
                        self.files,
                        device.idProduct,
                        sleep=self.sleep,
                        log=self.log,
                        present=self._present,
                        board=self.board,
                    )
                self._send(link, device)
            finally:
                link.close()
        raise FlashError(self._timed_out())

    def _due(self, device: Any) -> bool:
        """Whether a board seen in its ROM should be sent the second stage now."""
        product = device.idProduct
        if self.code is None:  # before any USB traffic, so a missing file costs nothing
            found = self.files.locate(SECOND_STAGE[product], product)
            if found is None:
                raise FlashError(self.files.missing(SECOND_STAGE[product], product))
            self.code = (found[1], found[0])
        if not self.sends:
            return True
        same = getattr(device, "address", None) == self.sent_to
        if same and self.clock() - self.sent_at < REENUMERATE_S:
            return False  # still the enumeration that took it; give it time to go
        if self.sends >= MAX_SENDS:
            raise FlashError(
                f"{self.board} stayed in its boot ROM after {self.sends} attempts to send "
                f"{SECOND_STAGE[product]}: {self.problem}"
            )
        self.log(f"{self.board} is still in its boot ROM; sending {SECOND_STAGE[product]} again")
        return True

    def _open(self, device: Any) -> Link | None:
        try:
            return Link(device)
        except UsbFailure as failure:
            if failure.code == LIBUSB_ERROR_ACCESS:
                # open_device_with_vid gives up on this one (main.c 356-360)
                raise FlashError(
                    f"permission denied opening {self.board} (0a5c:{device.idProduct:04x}):"
                    " run as root or add a udev rule for it"
                ) from None
            self.problem = f"could not open it ({failure.detail})"
            return None

    def _send(self, link: Link, device: Any) -> None:
        assert self.code is not None
        origin, code = self.code
        name = SECOND_STAGE[device.idProduct]
        self.sends += 1
        self.sent_to = getattr(device, "address", None)
        self.log(f"sending {name} ({len(code)} bytes, {origin}) to {self.board}")
        try:
            link.send(BOOT_MESSAGE.pack(len(code), b"\0" * 20))
            link.send(code)
        except UsbFailure as failure:
            self.sent_at = self.clock()
            self.problem = f"sending it failed ({failure.detail})"
            if failure.gone or not self._present():
                self.left = (self.clock(), f"receiving {name}")
            self.log(f"{self.problem}; waiting for {self.board} to come back")
            return
        # second_stage_boot (main.c 651-663) only reports the status: whatever it says,
        # what counts is whether the board comes back running the second stage.
        self.sleep(SETTLE_S)
        try:
            reply = link.receive(4)
        except UsbFailure as failure:
            self.sent_at = self.clock()
            self.problem = f"it did not come back after its status read failed ({failure.detail})"
            self.log(f"could not read the boot ROM's status ({failure.detail}); waiting")
            return
        self.sent_at = self.clock()
        if len(reply) == 4 and struct.unpack("<i", reply)[0] == 0:
            self.problem = "it took the second stage but did not re-enumerate"
            self.log(f"the boot ROM accepted {name}")
        else:
            self.problem = f"it refused the second stage (reply {reply.hex() or 'none'})"
            self.log(f"the boot ROM of {self.board} refused {name} (reply {reply.hex()})")

    def _present(self) -> bool:
        return any(usb_path(d) == self.path for d in self.finder())

    def _timed_out(self) -> str:
        if not self.seen:
            who = (
                f"USB path {self.wanted_path}"
                if self.wanted_path
                else f"serial {self.wanted_serial}"
                if self.wanted_serial
                else "any USB port"
            )
            return f"no Raspberry Pi in USB boot mode answered on {who} within {self.timeout:g} s"
        problem = self.problem or "it left the USB bus"
        if not self.sends:
            return f"{self.board} could not be used within {self.timeout:g} s: {problem}"
        return (
            f"{self.board} did not come back running its second stage within "
            f"{self.timeout:g} s: {problem}"
        )


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
    it loaded. Gives up after ``timeout`` seconds when the board never shows up or
    never gets there; every failure is a FlashError."""
    return _Boot(files, path, serial, timeout, finder, clock, sleep, log).run()
