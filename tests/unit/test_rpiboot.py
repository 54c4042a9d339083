"""The USB boot-ROM protocol against a simulated board at the pyusb boundary.

``SimBoard`` plays a Raspberry Pi in USB boot mode the way the protocol documents it:
it checks every vendor control transfer (request type, request, wValue/wIndex carrying
the length), collects bulk OUT data, answers control-IN reads, re-enumerates after the
second stage and then drives the file-server loop with a script of requests.
"""

from __future__ import annotations

import io
import struct
import tarfile
from pathlib import Path
from typing import Any

import pytest

from fleet.errors import FlashError
from fleet.flash import rpiboot

pytestmark = pytest.mark.unit


class SimUSBError(Exception):
    pass


class _Config:
    bNumInterfaces = 1


class SimBoard:
    def __init__(
        self,
        product: int,
        script: list[tuple[int, str]],
        serial: str = "10000000deadbeef",
        ports: tuple[int, ...] = (1, 3),
        reply: int = 0,
    ) -> None:
        self.product, self.script, self.serial, self.ports = product, list(script), serial, ports
        self.reply = reply
        self.stage = "rom"
        self.messages: list[bytes] = []  # complete host-to-board writes, in order
        self.announced: int | None = None
        self.bulk = bytearray()
        self.boot_length: int | None = None
        self.second_stage: bytes | None = None
        self.sizes: dict[str, int] = {}
        self.files: dict[str, bytes] = {}
        self.asked: tuple[int, str] | None = None
        self.touched = False

    # what usb.core.find would return for this board right now
    def enumerate(self) -> list[SimDevice]:
        return [] if self.stage == "gone" else [SimDevice(self)]

    def control(self, request_type: int, request: int, value: int, index: int, data: Any) -> Any:
        self.touched = True
        assert request == 0, "rpiboot uses vendor request 0 only"
        length = value | (index << 16)
        if request_type == rpiboot.CTRL_OUT:
            assert data is None, "the length rides in wValue/wIndex, never in a data stage"
            assert self.announced is None or self.announced == len(self.bulk), "overlapping write"
            self.on_announce(length)
            return 0
        assert request_type == rpiboot.CTRL_IN
        assert data == length, "wLength must equal the length in wValue/wIndex"
        return self.on_read(length)

    def bulk_out(self, endpoint: int, data: bytes) -> int:
        assert endpoint == 0x01
        assert self.announced is not None, "bulk data without a control announcement"
        assert len(self.bulk) + len(data) <= self.announced, "more data than announced"
        self.bulk += data
        if len(self.bulk) == self.announced:
            self.on_message(bytes(self.bulk))
            self.announced = None
            self.bulk = bytearray()
        return len(data)

    def on_announce(self, length: int) -> None:
        if self.stage == "rom":
            self.announced = length
            return
        # file server: the host's answer to the pending request
        assert self.asked is not None, "an answer without a question"
        command, name = self.asked
        if command == rpiboot.GET_FILE_SIZE:
            self.sizes[name] = length
            self.asked = None
        elif command == rpiboot.READ_FILE and length > 0:
            self.announced = length
        else:
            self.asked = None  # missing file, metadata, or Done acknowledged

    def on_message(self, data: bytes) -> None:
        if self.stage == "rom":
            if self.boot_length is None:
                assert len(data) == 24, "the boot message is 24 bytes"
                self.boot_length, signature = struct.unpack("<i20s", data)
                assert signature == b"\0" * 20
            else:
                assert len(data) == self.boot_length
                self.second_stage = data
            return
        assert self.asked is not None and self.asked[0] == rpiboot.READ_FILE
        self.files[self.asked[1]] = data
        self.asked = None

    def on_read(self, length: int) -> bytes:
        if self.stage == "rom":
            assert length == 4 and self.second_stage is not None
            self.stage = "second"  # the board re-enumerates running the second stage
            return struct.pack("<i", self.reply)
        assert length == 260 and self.asked is None, "a request before the last was answered"
        command, name = self.script.pop(0)
        if command == rpiboot.DONE:
            self.stage = "gone"
        # an empty name also ends the server, which then acknowledges it with length 0
        if command != rpiboot.DONE or not name:
            self.asked = (command, name)
        return struct.pack("<i256s", command, name.encode())


class SimDevice:
    """The slice of usb.core.Device that fleet uses."""

    idVendor = rpiboot.VENDOR

    def __init__(self, board: SimBoard) -> None:
        self.board = board
        self.idProduct = board.product
        self.iSerialNumber = 0 if board.stage == "rom" else 1
        self.bus = 1
        self.port_numbers = board.ports
        self.serial_number = board.serial

    def get_active_configuration(self) -> _Config:
        return _Config()

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
        return self.board.control(bmRequestType, bRequest, wValue, wIndex, data_or_wLength)

    def write(self, endpoint: int, data: Any, timeout: int | None = None) -> int:
        assert timeout is not None
        return self.board.bulk_out(endpoint, bytes(data))


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def files(tmp_path: Path) -> rpiboot.BootFiles:
    (tmp_path / "bootcode4.bin").write_bytes(b"B4" * 40000)  # spans several bulk chunks
    (tmp_path / "config.txt").write_bytes(b"gadget=1\n")
    (tmp_path / "2711").mkdir()
    (tmp_path / "2711" / "start4.elf").write_bytes(b"\x7fELF" + b"s" * 100)
    (tmp_path.parent / "secret").write_bytes(b"do not serve")
    return rpiboot.BootFiles(tmp_path)


SCRIPT = [
    (rpiboot.GET_FILE_SIZE, "config.txt"),
    (rpiboot.READ_FILE, "config.txt"),
    (rpiboot.GET_FILE_SIZE, "../secret"),
    (rpiboot.READ_FILE, "../secret"),
    (rpiboot.GET_FILE_SIZE, "/etc/passwd"),
    (rpiboot.GET_FILE_SIZE, "start4.elf"),
    (rpiboot.READ_FILE, "start4.elf"),
    (rpiboot.GET_FILE_SIZE, "missing.dtb"),
    (rpiboot.DONE, ""),
]


def boot(boards: list[SimBoard], files: rpiboot.BootFiles, **kw: Any) -> list[str]:
    clock = FakeClock()
    return rpiboot.boot(
        files,
        finder=lambda: [d for b in boards for d in b.enumerate()],
        clock=clock,
        sleep=clock.sleep,
        **kw,
    )


def test_full_boot_of_a_pi4(files: rpiboot.BootFiles) -> None:
    board = SimBoard(0x2711, SCRIPT)
    served = boot([board], files)
    assert board.second_stage == b"B4" * 40000
    assert board.boot_length == 80000
    assert served == ["config.txt", "start4.elf"]
    assert board.files == {"config.txt": b"gadget=1\n", "start4.elf": b"\x7fELF" + b"s" * 100}
    # '..' and absolute names are answered as missing, and nothing is sent for them
    assert board.sizes == {
        "config.txt": 9,
        "../secret": 0,
        "/etc/passwd": 0,
        "start4.elf": 104,
        "missing.dtb": 0,
    }
    assert board.stage == "gone"


def test_second_stage_comes_from_bootfiles_bundle(tmp_path: Path) -> None:
    bundle = io.BytesIO()
    with tarfile.open(fileobj=bundle, mode="w") as tar:
        for name, data in (("2712/bootcode5.bin", b"B5" * 10), ("2712/config.txt", b"old")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (tmp_path / "bootfiles.bin").write_bytes(bundle.getvalue())
    (tmp_path / "2712").mkdir()
    (tmp_path / "2712" / "config.txt").write_bytes(b"override")
    board = SimBoard(0x2712, [(0, "config.txt"), (1, "config.txt"), (2, "")])
    boot([board], rpiboot.BootFiles(tmp_path))
    assert board.second_stage == b"B5" * 10
    assert board.files == {"config.txt": b"override"}


def test_selects_the_named_serial_and_leaves_others_alone(files: rpiboot.BootFiles) -> None:
    other = SimBoard(0x2711, SCRIPT, serial="1111", ports=(2,))
    wanted = SimBoard(0x2711, SCRIPT, serial="2222", ports=(4, 1))
    boot([other, wanted], files, serial="2222")
    assert wanted.stage == "gone" and not other.touched


def test_selects_by_usb_path(files: rpiboot.BootFiles) -> None:
    a = SimBoard(0x2711, SCRIPT, ports=(2,))
    b = SimBoard(0x2711, SCRIPT, ports=(4, 1))
    boot([a, b], files, path="1-4.1")
    assert b.stage == "gone" and not a.touched


def test_several_boards_and_none_named_is_refused(files: rpiboot.BootFiles) -> None:
    boards = [SimBoard(0x2711, SCRIPT, ports=(2,)), SimBoard(0x2711, SCRIPT, ports=(3,))]
    with pytest.raises(FlashError, match="several boards in USB boot mode"):
        boot(boards, files)


def test_named_board_absent_times_out_instead_of_hanging(files: rpiboot.BootFiles) -> None:
    with pytest.raises(FlashError, match="USB path 1-9 within 5 s"):
        boot([SimBoard(0x2711, SCRIPT)], files, path="1-9", timeout=5)


def test_rejected_second_stage_is_an_error(files: rpiboot.BootFiles) -> None:
    with pytest.raises(FlashError, match="refused the second stage"):
        boot([SimBoard(0x2711, SCRIPT, reply=1)], files)


def test_missing_second_stage_file_is_named(files: rpiboot.BootFiles) -> None:
    with pytest.raises(FlashError, match=r"bootcode\.bin is missing"):
        boot([SimBoard(0x2763, SCRIPT)], files)


def test_list_boards_shows_path_serial_and_stage() -> None:
    board = SimBoard(0x2764, SCRIPT, serial="abc", ports=(1, 2))
    listed = rpiboot.list_boards(lambda: board.enumerate())
    assert [b.as_dict() for b in listed] == [
        {"path": "1-1.2", "serial": "abc", "usb_id": "0a5c:2764", "stage": "rom"}
    ]


def test_default_finder_never_raises() -> None:
    # no USB here (or no libusb backend): an empty list, not an error
    assert isinstance(rpiboot.list_boards(), list)


@pytest.mark.parametrize("name", ["../x", "a/../../x", "/etc/passwd", "\\x", ""])
def test_file_names_outside_the_folder_are_refused(files: rpiboot.BootFiles, name: str) -> None:
    assert files.read(name, 0x2711) is None
