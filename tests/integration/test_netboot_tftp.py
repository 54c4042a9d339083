"""``fleet serve`` over real sockets on loopback: a signed release with a real FAT boot
payload, fetched by curl's TFTP client and by a scripted client that replays what
boards send (options, windowsize, a Pi 4's tsize probe and early abort, a client that
stops answering). Every refusal leaves the served bytes as they were loaded."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tftp_client import ERROR, WRQ, Client, request
from tftp_serve import FLEET, Served, serve_once
from tftp_serve import start as start_serve
from trust_fixtures import make_release

pytestmark = pytest.mark.integration

MTOOLS = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
KERNEL = os.urandom(3 << 20) + b"tail"  # not a multiple of any block size
DTB = os.urandom(40000)
BIG = os.urandom(512 * 65536 + 1000)  # more blocks of 512 than a 16-bit counter holds


def fat_image(path: Path, files: dict[str, bytes]) -> bytes:
    subprocess.run(["mkfs.vfat", "-C", str(path), str(48 << 10)], check=True, capture_output=True)
    staged = path.parent / "staged"
    for name, data in files.items():
        source = staged / name
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_bytes(data)
        if "/" in name:
            subprocess.run(
                ["mmd", "-D", "s", "-i", str(path), f"::/{name.rsplit('/', 1)[0]}"],
                env=MTOOLS,
                capture_output=True,
            )
        subprocess.run(
            ["mcopy", "-i", str(path), str(source), f"::/{name}"], env=MTOOLS, check=True
        )
    return path.read_bytes()


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("netboot")
    boot = fat_image(
        base / "boot.vfat",
        {
            "Image": KERNEL,
            "bcm2711-rpi-4-b.dtb": DTB,
            "overlays/vc4.dtbo": b"overlay",
            "big.bin": BIG,
            "cmdline.txt": b"console=ttyAMA0\n",
        },
    )
    folder = base / "release"
    make_release(folder, boot=boot, rootfs=os.urandom(1 << 20))
    subprocess.run(
        [FLEET, "keys", "generate", "--out", str(base / "keys"), "--name", "rel"],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [FLEET, "sign", str(folder), "--key", str(base / "keys/rel.sec")],
        check=True,
        capture_output=True,
    )
    return folder, base / "keys/rel.pub"


def start(release: tuple[Path, Path], tmp: Path, *extra: str) -> Served:
    args = ("--release", str(release[0]), "--trust", str(release[1]), *extra)
    return start_serve(tmp, "serving hello 1.2.3", *args)


@pytest.fixture(scope="module")
def server(
    release: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    served = start(release, tmp_path_factory.mktemp("serve"))
    yield served
    served.stop()


def curl(port: int, name: str, *extra: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["curl", "-sS", *extra, f"tftp://127.0.0.1:{port}/{name}"], capture_output=True, timeout=120
    )


@pytest.mark.parametrize("blksize", ["512", "1468"])
def test_curl_fetches_boot_files_byte_exact(server: Served, blksize: str) -> None:
    result = curl(server.port, "Image", "--tftp-blksize", blksize)
    assert result.returncode == 0, result.stderr
    assert result.stdout == KERNEL
    result = curl(server.port, "overlays/vc4.dtbo", "--tftp-blksize", blksize)
    assert result.stdout == b"overlay"
    assert f"file=Image bytes={len(KERNEL)} " in server.wait_for_log(
        f"blksize={blksize} window=1 ok"
    )


def test_the_release_itself_is_served_for_the_initramfs(
    server: Served, release: tuple[Path, Path]
) -> None:
    for name in ("manifest.json", "rootfs.squashfs"):
        result = curl(server.port, f"release/{name}")
        assert result.returncode == 0 and result.stdout == (release[0] / name).read_bytes()


def test_names_match_case_insensitively_as_on_a_fat_card(server: Served) -> None:
    assert curl(server.port, "BCM2711-RPI-4-B.DTB").stdout == DTB


def test_a_file_past_65535_blocks_rolls_the_counter_over(server: Served) -> None:
    client = Client(server.port)
    reply = client.fetch("big.bin")
    client.close()
    assert reply.data == BIG
    assert reply.blocks[65534:65538] == [65535, 0, 1, 2]
    assert curl(server.port, "big.bin").stdout == BIG  # and curl follows the rollover


def test_options_are_negotiated(server: Served) -> None:
    client = Client(server.port)
    reply = client.fetch(
        "Image", {"blksize": "1468", "tsize": "0", "timeout": "3", "windowsize": "16", "bogus": "1"}
    )
    client.close()
    assert reply.oack == {
        "blksize": "1468",
        "tsize": str(len(KERNEL)),
        "timeout": "3",
        "windowsize": "16",
    }
    assert reply.data == KERNEL
    assert "blksize=1468 window=16 ok" in server.wait_for_log("window=16 ok")


def test_a_block_size_above_the_limit_is_clamped(server: Served) -> None:
    client = Client(server.port)
    reply = client.fetch("bcm2711-rpi-4-b.dtb", {"blksize": "65464"})
    client.close()
    assert reply.oack == {"blksize": "1468"} and reply.data == DTB


def test_a_lost_block_inside_a_window_is_sent_again(server: Served) -> None:
    client = Client(server.port)
    reply = client.fetch("Image", {"blksize": "1468", "windowsize": "16"}, drop_block=20)
    client.close()
    assert reply.data == KERNEL
    assert reply.blocks.count(20) == 2


def test_a_pi4_probe_aborts_after_the_oack_and_asks_again(server: Served) -> None:
    """The EEPROM bootloader sends tsize=0, ends with "Early terminate" once it has the
    size, and requests the file again at once."""
    client = Client(server.port)
    probe = client.fetch("Image", {"tsize": "0", "blksize": "1468"}, abort_after_oack=True)
    assert probe.oack["tsize"] == str(len(KERNEL)) and probe.data == b""
    again = client.fetch("Image", {"tsize": "0", "blksize": "1468"})
    client.close()
    assert again.data == KERNEL
    assert "client ended it: Early terminate" in server.wait_for_log("Early terminate")


@pytest.mark.parametrize(
    "name",
    [
        "../release/manifest.json",
        "overlays/../Image",
        "/../Image",
        "//etc/passwd",
        "..%2fImage",
        "%2e%2e/Image",
        "%252e%252e/Image",
        "overlays\\vc4.dtbo",
        "Im\x01age",
        "./Image",
    ],
)
def test_paths_outside_the_tree_are_refused(server: Served, name: str) -> None:
    client = Client(server.port)
    reply = client.fetch(name)
    client.close()
    assert reply.error is not None and reply.error[0] == 2, reply.error
    assert reply.data == b""
    assert "refused path" in server.wait_for_log(f"{name!r} refused")


def test_a_nul_inside_a_name_does_not_smuggle_a_path(server: Served) -> None:
    client = Client(server.port)
    opcode, _ = client.send_raw(b"\0\x01Image\0../etc/passwd\0octet\0")
    client.close()
    assert opcode == ERROR  # the mode is '../etc/passwd': refused


def test_unknown_files_and_writes_are_refused(server: Served, release: tuple[Path, Path]) -> None:
    client = Client(server.port)
    reply = client.fetch("start4.elf")
    assert reply.error == (1, "file not found")
    opcode, body = client.send_raw(request(b"Image", opcode=WRQ))
    client.close()
    assert opcode == ERROR and b"read-only" in body
    upload = subprocess.run(
        ["curl", "-sS", "-T", "-", f"tftp://127.0.0.1:{server.port}/new"],
        input=b"x" * 100,
        capture_output=True,
        timeout=30,
    )
    assert upload.returncode != 0
    assert curl(server.port, "Image").stdout == KERNEL


def test_garbage_requests_get_an_error_and_the_server_goes_on(server: Served) -> None:
    client = Client(server.port)
    for junk in (b"\0\x01", b"\0\x09abc\0octet\0", b"\0\x01\xff\xfe\0octet\0", b"\0\x01a" * 300):
        assert client.send_raw(junk)[0] == ERROR
    client.close()
    assert curl(server.port, "cmdline.txt").stdout == b"console=ttyAMA0\n"


def test_many_clients_at_once_and_one_that_stops_answering(server: Served) -> None:
    silent = Client(server.port)
    stalled = silent.fetch("Image", stop_after_blocks=3)  # then never answers again
    assert len(stalled.data) == 3 * 512
    results: list[bytes] = []

    def one(opts: dict[str, str]) -> None:
        c = Client(server.port)
        results.append(c.fetch("Image", opts).data)
        c.close()

    # seven more from this address: with the silent one, the 8 a client may have at once
    threads = [
        threading.Thread(target=one, args=({"blksize": "1468", "windowsize": w},))
        for w in ("1", "4", "16", "1", "8", "2", "32")
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [KERNEL] * 7
    log = server.wait_for_log("no answer after 5 retries")
    silent.close()
    assert f"file=Image bytes={2 * 512} " in log  # the third block was never acknowledged


def test_one_address_gets_at_most_8_transfers_at_once(server: Served) -> None:
    held = [Client(server.port) for _ in range(8)]
    for c in held:
        c.fetch("Image", stop_after_blocks=1)
    extra = Client(server.port)
    assert extra.fetch("cmdline.txt").error == (0, "too many transfers")
    for c in held:
        c.close()
    server.wait_for_log("too many transfers")
    # once those have timed out, the address is served again
    deadline = time.monotonic() + 30
    while (reply := extra.fetch("cmdline.txt")).error and time.monotonic() < deadline:
        time.sleep(0.5)
    extra.close()
    assert reply.data == b"console=ttyAMA0\n"


def test_a_file_changed_on_disk_after_loading_is_never_served(
    release: tuple[Path, Path], tmp_path: Path
) -> None:
    folder = release[0]
    served = start(release, tmp_path)
    payload = folder / "rootfs.squashfs"
    original = payload.read_bytes()
    try:
        payload.write_bytes(b"evil" * (len(original) // 4))
        assert curl(served.port, "release/rootfs.squashfs").stdout == original
    finally:
        payload.write_bytes(original)
        served.stop()


def test_a_tampered_release_is_refused_before_serving(
    release: tuple[Path, Path], tmp_path: Path
) -> None:
    folder, trust = release
    copy = tmp_path / "release"
    subprocess.run(["cp", "-a", str(folder), str(copy)], check=True)
    data = bytearray((copy / "rootfs.squashfs").read_bytes())
    data[100] ^= 1
    (copy / "rootfs.squashfs").write_bytes(bytes(data))
    result = serve_once("--release", str(copy), "--trust", str(trust))
    assert result.returncode == 5
    assert "rootfs.squashfs does not match the manifest's hash" in result.stderr
    other = tmp_path / "other"
    subprocess.run(
        [FLEET, "keys", "generate", "--out", str(other), "--name", "x"],
        check=True,
        capture_output=True,
    )
    result = serve_once("--release", str(folder), "--trust", str(other / "x.pub"))
    assert result.returncode == 5 and len(result.stderr.strip().splitlines()) == 1
