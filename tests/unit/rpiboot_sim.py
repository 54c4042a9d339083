"""A Raspberry Pi in USB boot mode, simulated at the pyusb boundary.

``SimBoard`` plays the board the way the boot ROM and usbboot's ``main.c`` describe it:
it checks every vendor control transfer (request type, request, wValue/wIndex carrying
the length), collects bulk OUT data, answers control-IN reads, re-enumerates after the
second stage and then drives the file-server loop with a script of requests.

It also has the habits that made usbboot patient: a board that cannot be opened for a
moment after it enumerates, a boot ROM whose status cannot be read straight after the
second stage, long pauses between file requests, transfers that stall, short request
packets, a ROM that resets or ignores a second stage, interface 1 / endpoint 3, and
boards that drop off the bus. Its errors are real ``usb.core.USBError`` and
``USBTimeoutError`` instances with the libusb code and errno pyusb's libusb1 backend
gives them, so fleet is tested against what pyusb really raises. Time is a
``FakeClock``: a blocking read moves it forward instead of waiting.
"""

from __future__ import annotations

import errno
import struct
from dataclasses import dataclass
from typing import Any

import usb.core

from fleet.flash import rpiboot

# libusb error codes (libusb.h)
IO, ACCESS, NO_DEVICE, TIMEOUT, PIPE = -1, -3, -4, -7, -9
_ERRORS = {
    IO: ("Input/Output Error", errno.EIO),
    ACCESS: ("Access denied (insufficient permissions)", errno.EACCES),
    NO_DEVICE: ("No such device (it may have been disconnected)", errno.ENODEV),
    TIMEOUT: ("Operation timed out", errno.ETIMEDOUT),
    PIPE: ("Pipe error", errno.EPIPE),
}


def usb_error(code: int) -> usb.core.USBError:
    """The exception pyusb's libusb1 backend raises for ``code`` (its ``_check``)."""
    text, number = _ERRORS[code]
    kind = usb.core.USBTimeoutError if code == TIMEOUT else usb.core.USBError
    return kind(text, code, number)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


# ------------------------------------------------------------------ script steps
# A script is a list of (command, name) requests, mixed with these.


@dataclass(frozen=True)
class Gap:
    """The board's next request comes this long after the host's last answer."""

    seconds: float


@dataclass(frozen=True)
class Raw:
    """A request packet sent as these bytes. ``means`` is the request the board meant
    and waits for an answer to; None for line noise it does not wait on."""

    data: bytes
    means: tuple[int, str] | None = None


@dataclass(frozen=True)
class Fail:
    """The host's next read of a request fails once with this libusb error."""

    code: int


@dataclass(frozen=True)
class Leave:
    """The board drops off the bus; the host's pending read fails with ``code``."""

    code: int = NO_DEVICE


Step = tuple[int, str] | Gap | Raw | Fail | Leave


class SimBoard:
    def __init__(
        self,
        product: int,
        script: list[Step],
        serial: str = "10000000deadbeef",
        ports: tuple[int, ...] = (1, 3),
        reply: int = 0,
        *,
        interfaces: tuple[int, int] = (1, 1),  # bNumInterfaces in the ROM, in the 2nd stage
        open_delay: float = 0.0,  # after enumerating, opening fails for this long
        open_error: int | None = None,  # opening always fails with this
        status_delay: float = 0.0,  # the ROM status read fails if issued sooner than this
        status_error: int | None = None,  # the ROM status read fails with this
        rom_faults: tuple[int, ...] = (),  # each send of the 2nd stage fails once, in turn
        stay_in_rom: int = 0,  # this many 2nd stages are taken without re-enumerating
        leave_during: tuple[str, int, int] | None = None,  # (file, after bytes, error)
        clock: FakeClock | None = None,
    ) -> None:
        self.product, self.script, self.serial, self.ports = product, list(script), serial, ports
        self.reply = reply
        self.interfaces = interfaces
        self.open_delay, self.open_error = open_delay, open_error
        self.status_delay, self.status_error = status_delay, status_error
        self.rom_faults = list(rom_faults)
        self.stay_in_rom = stay_in_rom
        self.leave_during = leave_during
        self.clock = clock or FakeClock()
        self.stage = "rom"
        self.address = 1
        self.appeared_at = 0.0
        self.opened = False
        self.claimed: set[int] = set()
        self.announced: int | None = None
        self.bulk = bytearray()
        self.expect_code: int | None = None  # length from the boot message, until it arrives
        self.received_at: float | None = None  # when the last second-stage byte arrived
        self.last_answer_at = 0.0
        self.pending_gap = 0.0
        self.asked: tuple[int, str] | None = None
        # what a test looks at
        self.touched = False
        self.boot_length: int | None = None
        self.second_stage: bytes | None = None
        self.boot_messages = 0  # boot messages received (attempts to send a 2nd stage)
        self.sends = 0  # second stages received in full
        self.sizes: dict[str, int] = {}
        self.files: dict[str, bytes] = {}
        self.premature_opens = 0
        self.early_status_reads = 0
        self.read_timeouts = 0
        self.claims: list[tuple[str, int]] = []  # (stage, interface), explicit or pyusb's own
        self.unclaimed_transfers = 0  # control transfers before the vendor interface was claimed
        self.endpoints: dict[str, set[int]] = {}  # bulk OUT endpoints written, by stage

    # what usb.core.find would return for this board right now
    def enumerate(self) -> list[SimDevice]:
        return [] if self.stage == "gone" else [SimDevice(self)]

    def reenumerate(self, stage: str) -> None:
        self.stage = stage
        self.address += 1
        self.appeared_at = self.last_answer_at = self.clock()
        self.opened = False
        self.claimed = set()
        self.announced, self.bulk, self.expect_code = None, bytearray(), None

    def vendor_interface(self) -> int:
        return 0 if self.num_interfaces() == 1 else 1

    def num_interfaces(self) -> int:
        return self.interfaces[0 if self.stage == "rom" else 1]

    # -------------------------------------------------------------- device handle

    def open(self, device: SimDevice) -> None:
        if device.address != self.address or self.stage == "gone":
            raise usb_error(NO_DEVICE)  # a handle on an enumeration that has gone
        if self.opened:
            return
        if self.open_error is not None:
            raise usb_error(self.open_error)
        if self.clock() < self.appeared_at + self.open_delay:
            self.premature_opens += 1
            raise usb_error(IO)
        self.opened = True

    def claim(self, device: SimDevice, interface: int) -> None:
        self.open(device)
        assert interface < self.num_interfaces(), f"no interface {interface}"
        if interface not in self.claimed:
            self.claimed.add(interface)
            self.claims.append((self.stage, interface))

    def control(
        self, request_type: int, request: int, value: int, index: int, data: Any, timeout: float
    ) -> Any:
        self.touched = True
        if self.vendor_interface() not in self.claimed:
            self.unclaimed_transfers += 1
        assert request == 0, "rpiboot uses vendor request 0 only"
        length = value | (index << 16)
        if request_type == rpiboot.CTRL_OUT:
            assert data is None, "the length rides in wValue/wIndex, never in a data stage"
            assert self.announced is None or self.announced == len(self.bulk), "overlapping write"
            self.on_announce(length)
            return 0
        assert request_type == rpiboot.CTRL_IN
        assert data == length, "wLength must equal the length in wValue/wIndex"
        return self.on_read(length, timeout)

    def bulk_out(self, endpoint: int, data: bytes) -> int:
        # pyusb claims the interface an endpoint belongs to before writing to it
        owner = 0 if self.num_interfaces() == 1 or endpoint in (0x01, 0x02) else 1
        if owner not in self.claimed:
            self.claimed.add(owner)
            self.claims.append((self.stage, owner))
        self.endpoints.setdefault(self.stage, set()).add(endpoint)
        assert endpoint == (0x01 if self.vendor_interface() == 0 else 0x03), "not the vendor OUT"
        assert self.announced is not None, "bulk data without a control announcement"
        assert len(self.bulk) + len(data) <= self.announced, "more data than announced"
        self.check_faults(len(data))
        self.bulk += data
        if len(self.bulk) == self.announced:
            self.announced = None
            message, self.bulk = bytes(self.bulk), bytearray()
            self.on_message(message)
        return len(data)

    def receiving(self) -> str | None:
        """The file the current bulk transfer carries."""
        if self.stage == "rom":
            return rpiboot.SECOND_STAGE[self.product] if self.expect_code is not None else None
        return self.asked[1] if self.asked is not None else None

    def check_faults(self, length: int) -> None:
        name = self.receiving()
        if self.leave_during is not None and name == self.leave_during[0]:
            _, after, code = self.leave_during
            if len(self.bulk) + length > after:
                self.stage = "gone"
                raise usb_error(code)
        if self.stage == "rom" and name is not None and not self.bulk and self.rom_faults:
            # the ROM gives up on the transfer and starts over as a fresh enumeration
            code = self.rom_faults.pop(0)
            self.reenumerate("rom")
            raise usb_error(code)

    # ---------------------------------------------------------------- protocol

    def on_announce(self, length: int) -> None:
        if self.stage == "rom":
            self.announced = length
            return
        # file server: the host's answer to the pending request
        assert self.asked is not None, "an answer without a question"
        command, name = self.asked
        self.last_answer_at = self.clock()
        if not name:  # the host acknowledges the end of the server
            self.asked = None
            self.stage = "gone"
        elif command == rpiboot.GET_FILE_SIZE:
            self.sizes[name] = length
            self.asked = None
        elif command == rpiboot.READ_FILE and length > 0:
            self.announced = length
        else:
            self.asked = None  # missing file or metadata acknowledged

    def on_message(self, data: bytes) -> None:
        if self.stage == "rom":
            if self.expect_code is None:
                assert len(data) == 24, "the boot message is 24 bytes"
                self.boot_length, signature = struct.unpack("<i20s", data)
                assert signature == b"\0" * 20
                self.expect_code = self.boot_length
                self.boot_messages += 1
            else:
                assert len(data) == self.expect_code
                self.second_stage = data
                self.expect_code = None
                self.sends += 1
                self.received_at = self.clock()
            return
        assert self.asked is not None and self.asked[0] == rpiboot.READ_FILE
        self.files[self.asked[1]] = data
        self.asked = None
        self.last_answer_at = self.clock()

    def on_read(self, length: int, timeout: float) -> bytes:
        if self.stage == "rom":
            return self.status(length)
        assert length == 260 and self.asked is None, "a request before the last was answered"
        while self.script and isinstance(self.script[0], Gap):
            gap = self.script.pop(0)
            assert isinstance(gap, Gap)
            self.pending_gap += gap.seconds
        ready_at = self.last_answer_at + self.pending_gap
        if ready_at > self.clock() + timeout:
            self.clock.now += timeout
            self.read_timeouts += 1
            raise usb_error(TIMEOUT)
        self.clock.now = max(self.clock(), ready_at)
        self.pending_gap = 0.0
        assert self.script, "the host read past the end of the board's script"
        step = self.script.pop(0)
        if isinstance(step, Fail):
            raise usb_error(step.code)
        if isinstance(step, Leave):
            self.stage = "gone"
            raise usb_error(step.code)
        if isinstance(step, Raw):
            self.asked = step.means
            return step.data
        assert not isinstance(step, Gap)
        command, name = step
        if command == rpiboot.DONE and name:
            self.stage = "gone"  # Done with a name wants no answer
        else:
            self.asked = (command, name)  # an empty name is answered, then the board goes
        return struct.pack("<i256s", command, name.encode())

    def status(self, length: int) -> bytes:
        assert length == 4 and self.received_at is not None, "a status read before a 2nd stage"
        early = self.clock() < self.received_at + self.status_delay
        self.received_at = None
        # whatever happens to the read, the ROM goes on with what it was given
        if self.reply != 0:
            self.reenumerate("rom")  # it refused the code and starts over
        elif self.stay_in_rom:
            self.stay_in_rom -= 1
        else:
            self.reenumerate("second")
        if early:
            self.early_status_reads += 1
            raise usb_error(PIPE)
        if self.status_error is not None:
            raise usb_error(self.status_error)
        return struct.pack("<i", self.reply)


class _Config:
    def __init__(self, interfaces: int) -> None:
        self.bNumInterfaces = interfaces


class _Resources:
    """The part of pyusb's per-device resource manager (``Device._ctx``) that
    ``usb.util.claim_interface`` and ``usb.util.dispose_resources`` call."""

    def __init__(self, device: SimDevice) -> None:
        self.device = device
        self.disposed = 0

    def managed_claim_interface(self, device: Any, intf: Any) -> None:
        self.device.board.claim(self.device, int(intf))

    def dispose(self, device: Any, close_handle: bool = True) -> None:
        self.disposed += 1


class SimDevice:
    """The slice of usb.core.Device that fleet uses, for one enumeration of a board."""

    idVendor = rpiboot.VENDOR

    def __init__(self, board: SimBoard) -> None:
        self.board = board
        self.idProduct = board.product
        self.iSerialNumber = 0 if board.stage == "rom" else 1
        self.bus = 1
        self.address = board.address
        self.port_numbers = board.ports
        self.serial_number = board.serial
        self._ctx = _Resources(self)

    def get_active_configuration(self) -> _Config:
        self.board.open(self)
        return _Config(self.board.num_interfaces())

    def ctrl_transfer(
        self,
        bmRequestType: int,
        bRequest: int,
        wValue: int = 0,
        wIndex: int = 0,
        data_or_wLength: Any = None,
        timeout: int | None = None,
    ) -> Any:
        assert timeout is not None, "every transfer has a timeout"
        self.board.open(self)
        return self.board.control(
            bmRequestType, bRequest, wValue, wIndex, data_or_wLength, timeout / 1000
        )

    def write(self, endpoint: int, data: Any, timeout: int | None = None) -> int:
        assert timeout is not None
        self.board.open(self)
        return self.board.bulk_out(endpoint, bytes(data))
