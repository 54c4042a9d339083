"""A netbooted QEMU virt board (issue 12, item 6), through `fleet lab netboot`: its U-Boot
fetches boot.scr.uimg, the kernel and the netboot initramfs from `fleet serve` over a tap
device in a network namespace (192.0.2.0/24); the initramfs fetches the rootfs and the
signed manifest, checks them with the keys it pins and the manifest's hashes, and runs
the root from RAM.

The board's disk holds release 1 (hello_virt's card) and the server serves release 2:
the app answering 2.0.0 can only have come over the network, and the disk's bytes are
compared before and after. A release the board does not pin is refused by the board
itself, though the server was told to trust it; and rootfs bytes that do not match the
signed manifest, from a rogue server (dnsmasq's TFTP, serving whatever it is given), are
refused before anything mounts them."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from fleet.boards import get_profile
from fleet.lab.netboot_run import UBOOT_TFTP
from fleet.lab.netbooted import SERVER, NetLab, board_argv
from tests.conftest import NEEDS_QEMU, Built, copy_example, fleet

pytestmark = [pytest.mark.virtual, NEEDS_QEMU]


@pytest.fixture(scope="module")
def netboot_v2(tmp_path_factory: pytest.TempPathFactory, hello_virt: Built) -> Path:
    """hello-c 2.0.0 (release 2) built with --netboot, signed by hello_virt's key."""
    base = tmp_path_factory.mktemp("netboot-v2")
    app = copy_example("hello-c", base / "app", version="2.0.0", release=2,
                       lock_from=hello_virt.app)
    fleet("build", "--board", "qemu-virt-arm64", "--project", app, "--out", base / "out",
          "--key", hello_virt.key, "--netboot")
    return base / "out" / "release"


def test_a_release_built_without_netboot_is_refused_before_anything_starts(
    hello_virt: Built,
) -> None:
    proc = fleet("lab", "netboot", hello_virt.release, "--trust", hello_virt.pub, check=False)
    assert proc.returncode == 2
    assert "not netbootable (build it with fleet build --netboot)" in proc.stderr


def test_netbooted_board_runs_the_served_release_from_ram_and_never_writes_its_disk(
    hello_virt: Built, netboot_v2: Path
) -> None:
    proc = fleet("lab", "netboot", netboot_v2, "--trust", hello_virt.pub,
                 "--disk", hello_virt.disk, "--json")
    result = json.loads(proc.stdout)
    assert result["ok"] and result["version"] == "2.0.0", result
    assert result["disk_unchanged"] is True
    fetched = {item["file"]: item["bytes"] for item in result["fetched"]}
    release = {name: (netboot_v2 / name).stat().st_size
               for name in ("manifest.json", "rootfs.squashfs")}
    assert fetched["release/manifest.json"] == release["manifest.json"]
    assert fetched["release/rootfs.squashfs"] == release["rootfs.squashfs"]
    assert {"boot.scr.uimg", "Image.gz", "initrd-net.zst"} <= set(fetched)
    console = (Path(result["logs"]) / "console.log").read_text(errors="replace")
    assert "fleet: netboot from 192.0.2.1 as 192.0.2.10" in console  # U-Boot's script
    assert "fleet: netboot: release verified (ok release 2)" in console
    assert "system up: slot net, hello-c 2.0.0 (release 2)" in console


def test_a_release_the_board_does_not_pin_is_refused_by_the_board_itself(
    tmp_path: Path, hello_virt: Built, netboot_v2: Path
) -> None:
    # The release re-signed by a key the server trusts and the board does not.
    other = tmp_path / "keys"
    fleet("keys", "generate", "--out", other, "--name", "other")
    forged = tmp_path / "forged"
    shutil.copytree(netboot_v2, forged)
    shutil.rmtree(forged / "signatures")
    fleet("sign", forged, "--key", other / "other.sec")
    proc = fleet("lab", "netboot", forged, "--trust", other / "other.pub",
                 "--disk", hello_virt.disk, "--timeout", "120", "--json", check=False)
    assert proc.returncode == 7, proc.stderr
    result = json.loads(proc.stdout)
    assert not result["ok"] and result["disk_unchanged"] is True
    pinned = re.search(r"\(([0-9a-f]{16})\)", hello_virt.pub.read_text())[1]  # type: ignore[index]
    assert result["failure"] == (
        f"netboot from 192.0.2.1: the release has no signature by a key this board pins: {pinned}"
    )
    assert "netboot failed: netboot from 192.0.2.1: the release has no signature" in proc.stderr
    # The board never asked for the rootfs it could not check.
    assert "release/rootfs.squashfs" not in {item["file"] for item in result["fetched"]}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        # one bit of the rootfs, same size: the signed SHA-256 catches it
        ("flip", "release/rootfs.squashfs has SHA-256 "),
        # 1 MiB more than the signed size: the tmpfs sized by the manifest is full first
        ("grow", "cannot fetch release/rootfs.squashfs from 192.0.2.1"),
    ],
)
def test_rootfs_bytes_from_a_rogue_server_are_refused_by_the_board(
    tmp_path: Path, netboot_v2: Path, change: str, message: str
) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    subprocess.run(["mcopy", "-s", "-n", "-i", netboot_v2 / "boot.vfat", "::/", tree],
                   env={**os.environ, "MTOOLS_SKIP_CHECK": "1"}, check=True)
    shutil.copytree(netboot_v2, tree / "release")
    rootfs = tree / "release/rootfs.squashfs"
    data = bytearray(rootfs.read_bytes())
    if change == "flip":
        data[len(data) // 2] ^= 1
    else:
        data += bytes(1 << 20)
    rootfs.write_bytes(data)
    disk = tmp_path / "disk.img"
    with disk.open("wb") as handle:
        handle.truncate(64 << 20)
    net = NetLab("fleet-nb-rogue", "fnbrogue0").up()
    procs = []
    try:
        procs.append(subprocess.Popen(net.inside(
            "dnsmasq", "-k", "--port=0", "--enable-tftp", f"--tftp-root={tree}", "--user=root",
            f"--listen-address={SERVER}", "--bind-interfaces", "--conf-file=/dev/null",
            f"--pid-file={tmp_path / 'dnsmasq.pid'}"), stderr=subprocess.DEVNULL))
        argv = board_argv(get_profile("qemu-virt-arm64"), net, tmp_path, disk, UBOOT_TFTP)
        procs.append(subprocess.Popen(net.inside(*argv), stderr=subprocess.DEVNULL))
        console = tmp_path / "console.log"
        deadline = time.monotonic() + 180
        while "fleet: boot failed:" not in (text := console.read_text(errors="replace")
                                             if console.exists() else ""):
            assert time.monotonic() < deadline, text[-3000:]
            time.sleep(0.2)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(15)
        net.down()
    failed = next(line for line in text.splitlines() if "fleet: boot failed:" in line)
    assert message in failed, failed
    assert "fleet: [" not in text.split(failed)[0].rsplit("boot: netboot", 1)[1]  # no root
