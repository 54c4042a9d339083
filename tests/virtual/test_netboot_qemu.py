"""A netbooted QEMU virt board (issue 12, item 6): its U-Boot fetches boot.scr.uimg, the
kernel and the netboot initramfs from `fleet serve` over a tap device in a network
namespace (192.0.2.0/24); the initramfs fetches the rootfs and the signed manifest, checks
them with the keys it pins and the manifest's hashes, and runs the root from RAM.

The board's disk holds release 1 (hello_virt's card) and the server serves release 2:
the app answering 2.0.0 can only have come over the network, and the disk's bytes are
compared before and after. A release the board does not trust is refused by the board
itself, though the server was told to trust it."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet.boards import boards_dir, load_profile
from fleet.lab.netbooted import BOARD, SERVER, NetLab, board_argv
from tests.conftest import NEEDS_QEMU, Built, fleet
from tests.integration.tftp_serve import FLEET

pytestmark = [pytest.mark.virtual, NEEDS_QEMU]

PROFILE = load_profile(boards_dir() / "qemu-virt-arm64.toml")
# What a user's U-Boot would be given for a fast netboot: Ethernet-frame blocks, and
# windowsize (RFC 7440) so U-Boot does not wait for each block's ACK to come back.
UBOOT_TFTP = ("tftpblocksize=1468", "tftpwindowsize=16")


def sha256(path: Path) -> str:
    return hashlib.file_digest(path.open("rb"), "sha256").hexdigest()


@pytest.fixture(scope="module")
def net() -> Iterator[NetLab]:
    lab = NetLab("fleet-nb", "fnbtap0").up()
    yield lab
    lab.down()


class Netbooted:
    def __init__(self, net: NetLab, folder: Path, release: Path, trust: Path, disk: Path) -> None:
        self.folder, self.disk, self.net = folder, disk, net
        self.log = folder / "serve.log"
        self.serve = subprocess.Popen(
            net.inside(FLEET, "serve", "--release", release, "--trust", trust,
                       "--bind", SERVER, "--port", "69"),
            stdout=subprocess.DEVNULL, stderr=self.log.open("w"),
        )
        self.wait(self.log, "serving", 30)
        self.qemu = subprocess.Popen(
            net.inside(*board_argv(PROFILE, net, folder, disk, UBOOT_TFTP)),
            stdout=subprocess.DEVNULL, stderr=(folder / "qemu.err").open("w"),
        )

    def console(self) -> str:
        path = self.folder / "console.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait(self, path: Path, text: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = path.read_text(errors="replace") if path.exists() else ""
            if text in found:
                return found
            if self.serve.poll() is not None:
                raise AssertionError(f"fleet serve stopped:\n{self.log.read_text()}")
            time.sleep(0.2)
        raise AssertionError(f"{text!r} never in {path.name}:\n{path.read_text(errors='replace')[-4000:]}")

    def curl(self, path: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.net.inside("curl", "-s", "--max-time", "5", f"http://{BOARD}:8080{path}"),
            capture_output=True, text=True, timeout=30,
        )

    def stop(self) -> None:
        for proc in (self.qemu, self.serve):
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def start(net: NetLab, tmp_path: Path, card: Path, release: Path, trust: Path) -> Netbooted:
    disk = tmp_path / "disk.img"
    shutil.copyfile(card, disk)
    return Netbooted(net, tmp_path, release, trust, disk)


def test_netbooted_board_runs_the_served_release_from_ram_and_never_writes_its_disk(
    net: NetLab, tmp_path: Path, hello_virt: Built, hello_v2_virt: Path
) -> None:
    board = start(net, tmp_path, hello_virt.disk, hello_v2_virt, hello_virt.pub)
    before = sha256(board.disk)
    try:
        console = board.wait(tmp_path / "console.log", "fleet: system up", 240)
        assert f"fleet: netboot from {SERVER} as {BOARD}" in console
        assert "fleet: netboot: release verified (ok release 2)" in console
        assert "slot net" in console
        deadline = time.monotonic() + 60
        while (answer := board.curl("/version")).stdout.strip() != "2.0.0":
            assert time.monotonic() < deadline, (answer, board.console()[-3000:])
            time.sleep(0.5)
        assert board.curl("/health").returncode == 0
        # What the board fetched, by name: the serve log has a line per transfer.
        log = board.log.read_text()
        for name in ("boot.scr.uimg", "Image.gz", "initrd-net.zst", "release/manifest.json",
                     "release/rootfs.squashfs"):
            line = next(line for line in log.splitlines() if f" file={name} " in line)
            assert line.endswith(" ok"), log
    finally:
        board.stop()
    assert sha256(board.disk) == before


def test_a_release_the_board_does_not_pin_is_refused_by_the_board_itself(
    net: NetLab, tmp_path: Path, hello_virt: Built, hello_v2_virt: Path
) -> None:
    # The release re-signed by a key the server trusts and the board does not.
    other = tmp_path / "keys"
    fleet("keys", "generate", "--out", other, "--name", "other")
    forged = tmp_path / "forged"
    shutil.copytree(hello_v2_virt, forged)
    shutil.rmtree(forged / "signatures")
    fleet("sign", forged, "--key", other / "other.sec")
    board = start(net, tmp_path, hello_virt.disk, forged, other / "other.pub")
    before = sha256(board.disk)
    try:
        console = board.wait(tmp_path / "console.log", "fleet: boot failed:", 240)
        assert "netboot from 192.0.2.1: verify-release: release is not signed" in console or \
            "signed by unknown key" in console, console[-3000:]
        # The board never asked for the rootfs it could not check.
        assert "file=release/rootfs.squashfs" not in board.log.read_text()
    finally:
        board.stop()
    assert sha256(board.disk) == before
