"""The TFTP server's pure parts: path checks, option negotiation, the transfer state
machine (windows, lost blocks, duplicates, rollover, retries), and the server going on
past a fault in one request."""

from __future__ import annotations

import socket

import pytest

from fleet.netboot import packets
from fleet.netboot.layouts import mac_folder, serial_folder, split_board
from fleet.netboot.options import negotiate
from fleet.netboot.paths import BadPath, clean
from fleet.netboot.server import TftpServer
from fleet.netboot.transfer import MAX_RETRIES, Transfer

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("Image", "Image"),
        ("/Image", "Image"),
        ("overlays/vc4.dtbo", "overlays/vc4.dtbo"),
        ("10000000abcdef01/start4.elf", "10000000abcdef01/start4.elf"),
    ],
)
def test_clean_names(name: str, path: str) -> None:
    assert clean(name) == path


@pytest.mark.parametrize(
    "name",
    [
        "",
        "..",
        "../x",
        "a/../../x",
        "//x",
        "a//b",
        "./a",
        "a\\b",
        "a\x00b",
        "a\nb",
        "%2e%2e/x",
        "..%2fx",
        "%252e%252e%252fx",
        "%5cx",
        "a" * 256,
        "a/",
    ],
)
def test_names_that_could_leave_the_tree_are_refused(name: str) -> None:
    with pytest.raises(BadPath):
        clean(name)


def test_negotiation_clamps_and_drops() -> None:
    n = negotiate(
        {
            "blksize": "9000",
            "tsize": "0",
            "windowsize": "1000",
            "timeout": "0",
            "multicast": "1",
            "bogus": "x",
        },
        size=1234,
        max_blksize=1468,
    )
    assert (n.blksize, n.windowsize, n.timeout) == (1468, 64, 1.0)
    assert n.oack == {"blksize": 1468, "tsize": 1234, "windowsize": 64}
    assert negotiate({}, 10).oack is None
    assert negotiate({"blksize": "7", "tsize": "5", "windowsize": "x1"}, 10).oack is None


def blocks(out: list[tuple[bytes, memoryview]]) -> list[int]:
    return [int.from_bytes(h[2:4], "big") for h, _ in out]


def test_windows_advance_on_the_last_ack_and_resume_after_a_loss() -> None:
    t = Transfer(bytes(100 * 10), negotiate({"blksize": "10", "windowsize": "4"}, 1000))
    assert t.first()[0][0][:2] == b"\x00\x06"  # the OACK first
    assert blocks(t.on_ack(0)) == [1, 2, 3, 4]
    assert blocks(t.on_ack(4)) == [5, 6, 7, 8]
    assert blocks(t.on_ack(6)) == [7, 8, 9, 10]  # 7 was lost: resume after 6
    assert t.on_ack(6) == [] and t.on_ack(3) == []  # duplicates and old ACKs are ignored
    assert t.on_ack(200) == []  # a block never sent


def test_the_last_block_may_be_empty_and_ends_the_transfer() -> None:
    t = Transfer(b"x" * 20, negotiate({}, 20))
    t.blksize = 10
    t.blocks = 3
    out = t.first()
    assert [bytes(p) for _, p in out] == [b"x" * 10]
    assert [bytes(p) for _, p in t.on_ack(1)] == [b"x" * 10]
    assert [bytes(p) for _, p in t.on_ack(2)] == [b""]
    t.on_ack(3)
    assert t.outcome.done and t.delivered == 20


def test_block_numbers_roll_over_past_65535() -> None:
    t = Transfer(bytes(8 * 65540), negotiate({"blksize": "8", "windowsize": "4"}, 0))
    t.on_ack(0)
    t.acked = t.sent = 65532
    assert blocks(t._window()) == [65533, 65534, 65535, 0]
    assert blocks(t.on_ack(0)) == [1, 2, 3, 4]  # ACK 0 now means block 65536
    assert t.acked == 65536


def test_a_silent_client_is_given_up_on() -> None:
    t = Transfer(b"abc", negotiate({}, 3))
    t.first()
    for _ in range(MAX_RETRIES):
        assert blocks(t.on_timeout()) == [1]
    assert t.on_timeout() == [] and t.outcome.failed == f"no answer after {MAX_RETRIES} retries"


@pytest.mark.parametrize(
    ("path", "split"),
    [
        ("a1b2c3d4/start4.elf", ("serial", "a1b2c3d4", "start4.elf")),
        ("A1B2C3D4/overlays/x.dtbo", ("serial", "a1b2c3d4", "overlays/x.dtbo")),
        ("dc-a6-32-01-36-c2/start4.elf", ("mac", "dc-a6-32-01-36-c2", "start4.elf")),
        ("start4.elf", (None, None, "start4.elf")),
        ("a1b2c3d4", (None, None, "a1b2c3d4")),  # a file, not a folder
        ("a1b2c3d45/x", (None, None, "a1b2c3d45/x")),
        ("overlays/vc4.dtbo", (None, None, "overlays/vc4.dtbo")),
    ],
)
def test_board_folders(path: str, split: tuple[str | None, str | None, str]) -> None:
    assert split_board(path) == split


def test_serial_and_mac_folders() -> None:
    assert serial_folder("10000000A1B2C3D4") == "a1b2c3d4"
    assert serial_folder("00c0ffee") == "00c0ffee"
    assert serial_folder("e4ba9a6b1d6f3d1b") == "1d6f3d1b"  # 64-bit serials: the low 8 too
    assert serial_folder("c0ffee") is None
    assert mac_folder("DC:A6:32:01:36:C2") == "dc-a6-32-01-36-c2"
    assert mac_folder("dc:a6:32:01:36") is None


def test_a_fault_while_resolving_one_request_is_refused_and_the_server_goes_on() -> None:
    calls: list[str] = []

    def resolve(ip: str, path: str) -> tuple[str, bytes]:
        calls.append(path)
        if path == "bad":
            raise RuntimeError("a bug")
        return "board", b"ok"

    logged: list[str] = []
    server = TftpServer(resolve, "127.0.0.1", 0, log=logged.append)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.settimeout(5)
    try:
        answers = []
        for name in (b"bad", b"good"):
            client.sendto(b"\0\1" + name + b"\0octet\0", ("127.0.0.1", server.port))
            server.step(1.0)
            answers.append(client.recvfrom(600)[0])
        assert answers[0][:4] == packets.HEADER.pack(packets.ERROR, packets.NOT_DEFINED)
        assert b"internal error" in answers[0]
        assert answers[1] == packets.HEADER.pack(packets.DATA, 1) + b"ok"
        assert calls == ["bad", "good"]
        assert "'bad' refused: internal error (RuntimeError('a bug'))" in logged[0]
    finally:
        client.close()
        server.close()
