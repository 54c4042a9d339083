"""``fleet serve --map``: two releases, boards told apart by serial folder, MAC folder
and client address, each with its own settings; the request sequences of a Pi 3 boot
ROM and a Pi 4 bootloader replayed by a scripted client; SIGHUP reloads without
dropping a transfer in flight."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from tftp_client import Client
from tftp_serve import FLEET, Served, start
from trust_fixtures import make_release

pytestmark = pytest.mark.integration

MTOOLS = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
SSH_KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl ops@test"
)


def boot_fat(path: Path, version: bytes) -> bytes:
    subprocess.run(["mkfs.vfat", "-C", str(path), "4096"], check=True, capture_output=True)
    files = {
        "bootcode.bin": b"pi3 first stage",
        "start.elf": b"pi3 start " + version,
        "start4.elf": b"pi4 start " + version,
        "fixup4.dat": b"fixup " + version,
        "config.txt": b"[all]\nkernel=Image\n",
        "Image": version * 5000,
    }
    for name, data in files.items():
        (path.parent / name).write_bytes(data)
        subprocess.run(
            ["mcopy", "-i", str(path), str(path.parent / name), f"::/{name}"],
            env=MTOOLS,
            check=True,
        )
    return path.read_bytes()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("netmap")
    subprocess.run(
        [FLEET, "keys", "generate", "--out", str(base / "keys"), "--name", "rel"],
        check=True,
        capture_output=True,
    )
    for n, version in ((1, b"v1"), (2, b"v2")):
        work = base / f"work{n}"
        work.mkdir()
        make_release(base / f"r{n}", release=n, boot=boot_fat(work / "boot.vfat", version))
        subprocess.run(
            [FLEET, "sign", str(base / f"r{n}"), "--key", str(base / "keys/rel.sec")],
            check=True,
            capture_output=True,
        )
    (base / "ops.pub").write_text(SSH_KEY + "\n")
    write_map(base, "kiosk-01")
    return base


def write_map(base: Path, first_hostname: str) -> None:
    (base / "boards.toml").write_text(
        '[defaults]\nrelease = "r1"\nauthorized_keys = ["ops.pub"]\n\n'
        f'[[board]]\nname = "pi4-a"\nserial = "10000000a1b2c3d4"\nhostname = "{first_hostname}"\n\n'
        '[[board]]\nname = "pi4-b"\nmac = "dc:a6:32:01:36:c2"\nrelease = "r2"\n\n'
        '[[board]]\nname = "pi3"\nserial = "00c0ffee"\n\n'
        '[[board]]\nname = "uboot"\naddress = "127.0.0.2"\nrelease = "r2"\n\n'
        '[[board]]\nname = "pi4-c"\nprefix = "lab/Pi4-C/"\nrelease = "r2"\n'
    )


@pytest.fixture
def server(lab: Path) -> Iterator[Served]:
    served = start(
        lab,
        "serving 5 boards",
        "--map",
        str(lab / "boards.toml"),
        "--trust",
        str(lab / "keys/rel.pub"),
    )
    yield served
    served.stop()
    write_map(lab, "kiosk-01")


def get(server: Served, name: str, source: str = "127.0.0.1", **kw: object) -> bytes:
    c = Client(server.port, source=source)
    reply = c.fetch(name, **kw)  # type: ignore[arg-type]
    c.close()
    assert reply.error is None, (name, reply.error)
    return reply.data


def error(server: Served, name: str, source: str = "127.0.0.1") -> tuple[int, str]:
    c = Client(server.port, source=source)
    reply = c.fetch(name)
    c.close()
    assert reply.error is not None, name
    return reply.error


def test_pi4_sequence_under_a_fixed_prefix_then_at_the_root(server: Served) -> None:
    # TFTP_PREFIX=1, TFTP_PREFIX_STR=lab/Pi4-C/ (matched whatever its case); once the
    # board has named itself, its requests at the root are its own too.
    c = Client(server.port)
    probe = c.fetch("lab/Pi4-C/start4.elf", {"tsize": "0"}, abort_after_oack=True)
    assert probe.oack["tsize"] == str(len(b"pi4 start v2"))
    got = {n: c.fetch(f"lab/Pi4-C/{n}").data for n in ("config.txt", "start4.elf", "Image")}
    assert got["start4.elf"] == b"pi4 start v2" and got["Image"] == b"v2" * 5000
    assert c.fetch("fixup4.dat").data == b"fixup v2"
    c.close()
    assert get(server, "lab/pi4-c/fleet/hostname") == b"pi4-c\n"
    # Not a board's prefix: a file its tree lacks, and from any other address, no board.
    assert error(server, "lab/pi4-d/start4.elf")[0] == 1
    assert error(server, "lab/pi4-d/start4.elf", source="127.0.0.3")[0] == 2
    assert "board=pi4-c file=fixup4.dat" in server.wait_for_log("file=fixup4.dat")


def test_pi4_sequence_in_its_serial_folder(server: Served) -> None:
    c = Client(server.port)
    probe = c.fetch("a1b2c3d4/start4.elf", {"tsize": "0", "blksize": "1468"}, abort_after_oack=True)
    assert probe.oack["tsize"] == str(len(b"pi4 start v1"))
    seq = ["config.txt", "start4.elf", "fixup4.dat", "config.txt", "Image"]
    got = {n: c.fetch(f"a1b2c3d4/{n}", {"blksize": "1468"}).data for n in seq}
    c.close()
    assert got["start4.elf"] == b"pi4 start v1" and got["Image"] == b"v1" * 5000
    assert get(server, "a1b2c3d4/fleet/hostname") == b"kiosk-01\n"
    assert get(server, "a1b2c3d4/fleet/authorized_keys") == (SSH_KEY + "\n").encode()
    assert "board=pi4-a file=a1b2c3d4/start4.elf" in server.wait_for_log("Early terminate")


def test_mac_prefix_selects_another_release(server: Served) -> None:
    assert get(server, "dc-a6-32-01-36-c2/start4.elf") == b"pi4 start v2"
    assert get(server, "DC-A6-32-01-36-C2/fleet/hostname") == b"pi4-b\n"


def test_an_unknown_serial_is_refused_and_its_root_fallback_too(server: Served) -> None:
    """A Pi 4 whose folder does not exist drops the prefix and asks at the root."""
    assert error(server, "deadbeef/start4.elf", "127.0.0.9") == (1, "unknown board serial deadbeef")
    assert error(server, "start4.elf", "127.0.0.9") == (2, "unknown board at 127.0.0.9")
    assert "unknown board serial deadbeef" in server.wait_for_log("deadbeef")


def test_pi3_rom_sequence(server: Served) -> None:
    # bootcode.bin at the root before the ROM names its folder; bootsig.bin is expected
    # to be missing; then everything from the serial folder
    assert get(server, "bootcode.bin", "127.0.0.5") == b"pi3 first stage"
    assert error(server, "bootsig.bin", "127.0.0.5") == (1, "file not found")
    assert get(server, "00c0ffee/start.elf", "127.0.0.5") == b"pi3 start v1"
    assert get(server, "00c0ffee/fleet/hostname", "127.0.0.5") == b"pi3\n"
    # having named its folder, the same address is that board at the root too
    assert get(server, "config.txt", "127.0.0.5") == b"[all]\nkernel=Image\n"


def test_uboot_by_client_address(server: Served) -> None:
    assert get(server, "Image", "127.0.0.2") == b"v2" * 5000
    assert get(server, "/fleet/hostname", "127.0.0.2") == b"uboot\n"


def test_sighup_reloads_without_dropping_a_transfer(server: Served, lab: Path) -> None:
    c = Client(server.port)
    partial = c.fetch("a1b2c3d4/Image", stop_after_blocks=2)  # block 2 not yet acknowledged
    write_map(lab, "kiosk-99")
    server.proc.send_signal(signal.SIGHUP)
    server.wait_for_log("reloaded")
    rest = c.resume(2)  # ACK block 2 and take the rest
    c.close()
    assert partial.data + rest == b"v1" * 5000
    assert get(server, "a1b2c3d4/fleet/hostname") == b"kiosk-99\n"


def test_a_broken_map_on_reload_keeps_the_old_one(server: Served, lab: Path) -> None:
    (lab / "boards.toml").write_text('[[board]]\nname = "x"\nserial = "nothex!!"\nrelease = "r1"\n')
    server.proc.send_signal(signal.SIGHUP)
    log = server.wait_for_log("reload failed")
    assert "is not a Raspberry Pi serial" in log
    assert get(server, "a1b2c3d4/fleet/hostname") == b"kiosk-01\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[board]]\nname = "a"\nrelease = "r1"\n', "needs a serial, mac, address or prefix"),
        ('[[board]]\nname = "a"\nprefix = "lab/a"\nrelease = "r1"\n', "ending in '/'"),
        ('[[board]]\nname = "a"\nprefix = "lab/../a/"\nrelease = "r1"\n', "lab/../a/"),
        (
            '[[board]]\nname = "a"\nprefix = "a/"\nserial = "00c0ffee"\nrelease = "r1"\n',
            "known by it alone",
        ),
        ('[[board]]\nname = "a"\nserial = "00c0ffee"\n', "no [defaults] release"),
        (
            '[[board]]\nname = "a"\nserial = "00c0ffee"\nrelease = "r1"\n'
            '[[board]]\nname = "b"\nserial = "1000000000c0ffee"\nrelease = "r1"\n',
            "is also a",
        ),
        ('[[board]]\nname = "a"\nmac = "zz"\nrelease = "r1"\n', "not a MAC address"),
        ('[[board]]\nname = "a"\naddress = "999.1.1.1"\nrelease = "r1"\n', "not an IPv4"),
        ('[[board]]\nname = "a b"\naddress = "192.0.2.1"\nrelease = "r1"\n', "valid hostname"),
        ('[[board]]\nname = "a"\naddress = "192.0.2.1"\nrelease = "r1"\ncolour = 1\n', "colour"),
    ],
)
def test_bad_maps_are_refused_with_one_line(lab: Path, text: str, message: str) -> None:
    bad = lab / "bad.toml"
    bad.write_text(text)
    result = subprocess.run(
        [
            FLEET,
            "serve",
            "--map",
            str(bad),
            "--trust",
            str(lab / "keys/rel.pub"),
            "--bind",
            "127.0.0.1",
            "--port",
            "9",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
