"""The USB boot-ROM protocol against a simulated board at the pyusb boundary
(``rpiboot_sim``). Each robustness test names the place in usbboot's main.c whose
behaviour it holds fleet to."""

from __future__ import annotations

import io
import struct
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from rpiboot_sim import (
    ACCESS,
    IO,
    NO_DEVICE,
    PIPE,
    TIMEOUT,
    Fail,
    FakeClock,
    Gap,
    Leave,
    Raw,
    SimBoard,
)

from fleet.errors import FlashError
from fleet.flash import rpiboot

pytestmark = pytest.mark.unit


@pytest.fixture
def files(tmp_path: Path) -> rpiboot.BootFiles:
    folder = tmp_path / "mass-storage-gadget64"
    (folder / "2711").mkdir(parents=True)
    (folder / "bootcode4.bin").write_bytes(b"B4" * 40000)  # spans several bulk chunks
    (folder / "config.txt").write_bytes(b"gadget=1\n")
    (folder / "2711" / "start4.elf").write_bytes(b"\x7fELF" + b"s" * 100)
    (tmp_path / "secret").write_bytes(b"do not serve")
    return rpiboot.BootFiles(folder)


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
SHORT = [(0, "config.txt"), (1, "config.txt"), (2, "")]
SERVED = {"config.txt": b"gadget=1\n"}


def boot(
    boards: list[SimBoard],
    files: rpiboot.BootFiles,
    log: Callable[[str], None] = lambda _m: None,
    **kw: Any,
) -> list[str]:
    clock = FakeClock()
    for board in boards:
        board.clock = clock
    return rpiboot.boot(
        files,
        finder=lambda: [d for b in boards for d in b.enumerate()],
        clock=clock,
        sleep=clock.sleep,
        log=log,
        **kw,
    )


def bundle(path: Path, members: dict[str, bytes]) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(buffer.getvalue())


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
    assert board.claims == [("rom", 0), ("second", 0)] and board.unclaimed_transfers == 0


def test_second_stage_comes_from_bootfiles_bundle(tmp_path: Path) -> None:
    bundle(
        tmp_path / "bootfiles.bin", {"2712/bootcode5.bin": b"B5" * 10, "2712/config.txt": b"old"}
    )
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
    # usbboot only reports a refusal and sends again to the ROM that comes back
    # (second_stage_boot, main() loop); fleet does so a bounded number of times
    board = SimBoard(0x2711, SCRIPT, reply=1)
    with pytest.raises(FlashError, match=r"refused the second stage \(reply 01000000\)") as err:
        boot([board], files)
    assert f"after {rpiboot.MAX_SENDS} attempts to send bootcode4.bin" in str(err.value)
    assert board.sends == rpiboot.MAX_SENDS


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


# ---------------------------------------------- 1. boot files: msd fallback, bundle case


@pytest.fixture
def share(tmp_path: Path) -> Path:
    """/usr/share/rpiboot as usbboot's Makefile installs it: the gadget bundle (only
    2711/ and 2712/ first stages) and, beside it, msd/."""
    gadget = tmp_path / "mass-storage-gadget64"
    gadget.mkdir()
    bundle(
        gadget / "bootfiles.bin",
        {"2711/bootcode4.bin": b"B4", "2712/bootcode5.bin": b"B5", "2712/config.txt": b"c5"},
    )
    (gadget / "config.txt").write_bytes(b"boot_ramdisk=1\n")
    msd = tmp_path / "msd"
    msd.mkdir()
    (msd / "bootcode.bin").write_bytes(b"MSD-bootcode")
    (msd / "bootcode4.bin").write_bytes(b"MSD-bootcode4")
    (msd / "start.elf").write_bytes(b"MSD-start")
    return tmp_path


@pytest.mark.parametrize("product", [0x2764, 0x2763])
def test_zero2w_and_cm3_boot_from_msd_beside_the_gadget_bundle(share: Path, product: int) -> None:
    # check_file (main.c 747-767): bootcode.bin and start.elf fall back to msd/
    board = SimBoard(product, [(0, "start.elf"), (1, "start.elf"), (2, "")])
    served = boot([board], rpiboot.BootFiles(share / "mass-storage-gadget64"))
    assert board.second_stage == b"MSD-bootcode"
    assert served == ["start.elf"] and board.files == {"start.elf": b"MSD-start"}


def test_everything_missing_is_named_before_any_usb_traffic(share: Path) -> None:
    (share / "msd" / "bootcode.bin").unlink()
    board = SimBoard(0x2764, SCRIPT)
    with pytest.raises(FlashError, match=r"bootcode\.bin is missing") as err:
        boot([board], rpiboot.BootFiles(share / "mass-storage-gadget64"))
    assert str(share / "msd") in str(err.value)
    assert not board.touched


def test_missing_second_stage_file_is_named(files: rpiboot.BootFiles) -> None:
    # no bootcode.bin in the folder, no bundle, no msd/ beside it
    board = SimBoard(0x2763, SCRIPT)
    with pytest.raises(FlashError, match=r"bootcode\.bin is missing"):
        boot([board], files)
    assert not board.touched


def test_bundle_member_names_match_case_insensitively(tmp_path: Path) -> None:
    # bootfiles_read (bootfiles.c 70) compares names with strcasecmp
    bundle(
        tmp_path / "bootfiles.bin",
        {"2711/BOOTCODE4.BIN": b"B4", "./2711/Config.TXT": b"cfg", "2711/config.txt": b"later"},
    )
    board = SimBoard(0x2711, [(0, "config.txt"), (1, "config.txt"), (2, "")])
    boot([board], rpiboot.BootFiles(tmp_path, msd=tmp_path / "no-msd"))
    assert board.second_stage == b"B4"
    assert board.files == {"config.txt": b"cfg"}  # the first match, as bootfiles_read stops


def test_lookup_order_follows_check_file(share: Path) -> None:
    gadget = share / "mass-storage-gadget64"
    files = rpiboot.BootFiles(gadget)
    # the bundle's 2712/config.txt wins over the folder's top-level config.txt ...
    assert files.read("config.txt", 0x2712) == b"c5"
    # ... the folder's chip subfolder wins over the bundle ...
    (gadget / "2712").mkdir()
    (gadget / "2712" / "config.txt").write_bytes(b"mine")
    assert files.read("config.txt", 0x2712) == b"mine"
    # ... the top level is used when the bundle has no such member ...
    assert files.read("config.txt", 0x2711) == b"boot_ramdisk=1\n"
    # ... and msd/ comes last, a 2711 getting the common start.elf for start4.elf
    assert files.read("start4.elf", 0x2711) == b"MSD-start"
    assert files.read("bootcode4.bin", 0x2711) == b"B4"
    assert files.read("fixup.dat", 0x2764) is None


# ----------------------------------------------------------------------- 2. timing


def test_waits_for_a_board_to_be_ready_before_opening_it(files: rpiboot.BootFiles) -> None:
    # open_device_with_vid sleeps 1 s before libusb_open (main.c 353-355)
    board = SimBoard(0x2711, SHORT, open_delay=0.9)
    assert boot([board], files) == ["config.txt"]
    assert board.premature_opens == 0 and board.files == SERVED


def test_a_board_that_stays_unopenable_is_a_flash_error(files: rpiboot.BootFiles) -> None:
    board = SimBoard(0x2711, SHORT, open_error=IO)
    with pytest.raises(FlashError, match=r"USB path 1-1\.3 could not be used within 5 s.*Input"):
        boot([board], files, timeout=5)


def test_waits_before_reading_the_boot_rom_status(files: rpiboot.BootFiles) -> None:
    # second_stage_boot sleeps 1 s before ep_read of the status (main.c 651-652)
    board = SimBoard(0x2711, SHORT, status_delay=0.9)
    lines: list[str] = []
    boot([board], files, log=lines.append)
    assert board.early_status_reads == 0
    assert any("boot ROM accepted bootcode4.bin" in line for line in lines)
    assert board.files == SERVED


def test_long_gaps_between_file_requests_are_waited_out(files: rpiboot.BootFiles) -> None:
    # ep_read waits 20 s (main.c 468-479)
    script = [Gap(4.5), *SHORT[:2], Gap(12.0), SHORT[2]]
    board = SimBoard(0x2711, script)
    assert boot([board], files) == ["config.txt"]
    assert board.read_timeouts == 0 and board.stage == "gone"


@pytest.mark.parametrize("code", [PIPE, TIMEOUT])
def test_a_failed_request_read_is_retried(files: rpiboot.BootFiles, code: int) -> None:
    # file_server sleeps 1 s and reads again after a failed read (main.c 849-857)
    board = SimBoard(0x2711, [Fail(code), *SHORT[:2], Fail(code), SHORT[2]])
    assert boot([board], files) == ["config.txt"]
    assert board.files == SERVED and board.stage == "gone"


def test_a_board_that_goes_silent_is_given_up_on(files: rpiboot.BootFiles) -> None:
    board = SimBoard(0x2711, [*SHORT[:2], Gap(3600.0), SHORT[2]])
    with pytest.raises(FlashError, match=r"stopped asking for files after config\.txt"):
        boot([board], files, timeout=30)
    assert board.read_timeouts == rpiboot.MAX_BAD_READS


# ----------------------------------------------------------------------- 3. errors


@pytest.mark.parametrize("code", [NO_DEVICE, PIPE, TIMEOUT])
def test_a_failed_status_read_is_not_fatal(files: rpiboot.BootFiles, code: int) -> None:
    # second_stage_boot only prints a failed status read (main.c 652-661)
    board = SimBoard(0x2711, SHORT, status_error=code)
    lines: list[str] = []
    assert boot([board], files, log=lines.append) == ["config.txt"]
    assert board.sends == 1 and board.files == SERVED
    assert any("could not read the boot ROM's status" in line for line in lines)


@pytest.mark.parametrize("code", [PIPE, TIMEOUT, IO])
def test_a_transient_rom_error_sends_the_second_stage_again(
    files: rpiboot.BootFiles, code: int
) -> None:
    # main() loops while the board is in its ROM and sends again (main.c 1064-1121)
    board = SimBoard(0x2711, SHORT, rom_faults=(code,))
    assert boot([board], files) == ["config.txt"]
    assert board.boot_messages == 2 and board.sends == 1 and board.files == SERVED


def test_a_rom_that_does_not_re_enumerate_is_sent_again(files: rpiboot.BootFiles) -> None:
    board = SimBoard(0x2711, SHORT, stay_in_rom=1)
    assert boot([board], files) == ["config.txt"]
    assert board.sends == 2 and board.files == SERVED


def test_a_rom_that_never_takes_the_second_stage_is_given_up_on(
    files: rpiboot.BootFiles,
) -> None:
    board = SimBoard(0x2711, SHORT, stay_in_rom=99)
    with pytest.raises(FlashError, match="stayed in its boot ROM after 3 attempts"):
        boot([board], files, timeout=60)
    assert board.sends == rpiboot.MAX_SENDS


@pytest.mark.parametrize("code", [NO_DEVICE, IO])
def test_a_board_that_leaves_between_requests_ends_the_server(
    files: rpiboot.BootFiles, code: int
) -> None:
    # file_server drops out on LIBUSB_ERROR_NO_DEVICE, or IO on Windows (main.c 850-854)
    board = SimBoard(0x2711, [*SHORT[:2], Leave(code)])
    assert boot([board], files) == ["config.txt"]
    assert board.files == SERVED


@pytest.mark.parametrize("code", [NO_DEVICE, TIMEOUT])
def test_a_board_that_leaves_while_receiving_a_file(files: rpiboot.BootFiles, code: int) -> None:
    board = SimBoard(0x2711, SCRIPT, leave_during=("start4.elf", 0, code))
    with pytest.raises(
        FlashError, match=r"^the board at USB path 1-1\.3 left the USB bus while receiving start4"
    ):
        boot([board], files)
    assert board.files == SERVED


def test_a_board_that_leaves_while_receiving_the_second_stage(files: rpiboot.BootFiles) -> None:
    board = SimBoard(0x2711, SCRIPT, leave_during=("bootcode4.bin", 20000, NO_DEVICE))
    with pytest.raises(FlashError, match=r"left the USB bus while receiving bootcode4\.bin"):
        boot([board], files)
    assert board.sends == 0


def test_a_trimmed_request_packet_is_served(files: rpiboot.BootFiles) -> None:
    # ep_read reports success whatever the length (main.c 475-478); a NUL-terminated
    # name in a short packet means what it says
    trimmed = struct.pack("<i", 0) + b"config.txt\0"
    board = SimBoard(0x2711, [Raw(trimmed, means=(0, "config.txt")), *SHORT[1:]])
    assert boot([board], files) == ["config.txt"]
    assert board.sizes == {"config.txt": 9} and board.files == SERVED


def test_a_garbled_short_packet_is_skipped(files: rpiboot.BootFiles) -> None:
    board = SimBoard(0x2711, [Raw(b"\x01\x00"), Raw(b"\x00\x00\x00\x00con"), *SHORT])
    assert boot([board], files) == ["config.txt"]
    assert board.files == SERVED


def test_endless_short_packets_are_a_flash_error(files: rpiboot.BootFiles) -> None:
    board = SimBoard(0x2711, [Raw(b"\x01")] * 10)
    with pytest.raises(FlashError, match=r"3 malformed file-server requests in a row"):
        boot([board], files)


def test_permission_denied_is_a_flash_error(files: rpiboot.BootFiles) -> None:
    # open_device_with_vid stops on LIBUSB_ERROR_ACCESS (main.c 356-360)
    board = SimBoard(0x2711, SHORT, open_error=ACCESS)
    with pytest.raises(FlashError, match=r"permission denied.*USB path 1-1\.3"):
        boot([board], files)


# ---------------------------------------------------------- 4. the second interface


def test_a_rom_with_two_interfaces_uses_interface_1_and_endpoint_3(tmp_path: Path) -> None:
    # Initialize_Device (main.c 408-429): interface 1, OUT endpoint 3, claimed first
    (tmp_path / "bootcode.bin").write_bytes(b"B" * 20000)
    (tmp_path / "start.elf").write_bytes(b"S")
    board = SimBoard(0x2764, [(0, "start.elf"), (1, "start.elf"), (2, "")], interfaces=(2, 1))
    boot([board], rpiboot.BootFiles(tmp_path))
    assert board.endpoints == {"rom": {0x03}, "second": {0x01}}
    assert board.claims == [("rom", 1), ("second", 0)]
    assert board.unclaimed_transfers == 0
    assert board.second_stage == b"B" * 20000 and board.files == {"start.elf": b"S"}


def test_a_zero2w_with_all_its_habits_boots(share: Path) -> None:
    board = SimBoard(
        0x2764,
        [Gap(4.0), (0, "start.elf"), (1, "start.elf"), Fail(PIPE), (2, "")],
        interfaces=(2, 2),
        open_delay=0.9,
        status_delay=0.9,
    )
    served = boot([board], rpiboot.BootFiles(share / "mass-storage-gadget64"))
    assert served == ["start.elf"] and board.second_stage == b"MSD-bootcode"
    assert board.endpoints == {"rom": {0x03}, "second": {0x03}}
    assert board.claims == [("rom", 1), ("second", 1)]
    assert board.premature_opens == board.early_status_reads == board.read_timeouts == 0
