"""Per-board identity and app data on real QEMU boards booting one disk image: each board
its own host key and hostname, the same signed payload bytes on all, data that outlives
a power cut, and a damaged data partition that is reported, not fatal."""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet import lab, ssh
from fleet.lab import hostkey
from tests.conftest import NEEDS_QEMU, Built, copy_example, fleet

pytestmark = [
    pytest.mark.virtual,
    NEEDS_QEMU,
]

SLOT_A = {"boot": "/dev/vda2", "rootfs": "/dev/vda5"}


def sh(name: str, command: str) -> str:
    with lab.session(lab.get(name)) as session:
        result = session.exec(command)
    assert result.exit_code == 0, result.stderr
    return result.stdout.decode()


def fingerprint(name: str) -> str:
    # lab.session refuses any key but the one pinned when the board first came up.
    with lab.session(lab.get(name)) as session:
        return session.host_key_fingerprint()


def partition_start(disk: Path, number: int) -> int:
    table = json.loads(subprocess.run(
        ["sfdisk", "--json", str(disk)], capture_output=True, text=True, check=True
    ).stdout)["partitiontable"]
    for entry in table["partitions"]:
        if entry["node"].endswith(str(number)):
            return int(entry["start"]) * int(table.get("sectorsize", 512))
    raise AssertionError(f"no partition {number} on {disk}")


@pytest.fixture(scope="module")
def two_boards(hello_virt: Built, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    keys = tmp_path_factory.mktemp("ops")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ops@desk", "-f",
                    keys / "ops"], check=True)
    for name, hostname in (("id-a", "kiosk-a"), ("id-b", "kiosk-b")):
        fleet("lab", "up", "--board", "qemu-virt-arm64", "--disk", hello_virt.disk,
              "--name", name, "--hostname", hostname, "--authorized-key", keys / "ops.pub")
    yield hello_virt
    for name in ("id-a", "id-b"):
        lab.down(name)


def test_boards_from_one_image_are_each_themselves(two_boards: Built) -> None:
    fingerprints = {name: fingerprint(name) for name in ("id-a", "id-b")}
    assert fingerprints["id-a"] != fingerprints["id-b"]
    assert sh("id-a", "hostname").strip() == "kiosk-a"
    assert sh("id-b", "hostname").strip() == "kiosk-b"
    assert "ops@desk" in sh("id-a", "cat /root/.ssh/authorized_keys")

    # The signed payloads are the same bytes on both boards: what the manifest names.
    manifest = json.loads((two_boards.release / "manifest.json").read_text())
    for payload in manifest["payloads"]:
        device = SLOT_A[payload["name"]]
        for name in ("id-a", "id-b"):
            digest = sh(name, f"head -c {payload['size']} {device} | sha256sum").split()[0]
            assert digest == payload["sha256"], (name, payload["name"])

    # A power cut keeps each board's identity: the pinned-key connection still succeeds.
    for name in ("id-a", "id-b"):
        lab.power(name, "cycle")
        assert fingerprint(name) == fingerprints[name]
        assert sh(name, "cat /run/fleet/data-state").strip() == "ok"


def test_the_key_on_the_console_is_the_one_the_server_holds(two_boards: Built) -> None:
    """The lab pins the host key the board prints on its serial console (no first SSH
    handshake to trust): it must be the one its SSH server presents, at every boot."""
    board = lab.get("id-a")
    announced = hostkey.from_console_log(board.console_log, 0)
    assert announced is not None
    served = ssh.fetch_host_key("127.0.0.1", board.ssh_port)
    assert (served.get_name(), served.asbytes()) == announced
    pinned = ssh.pinned_keys(board.known_hosts_path, "127.0.0.1", board.ssh_port)
    assert [(k.get_name(), k.asbytes()) for k in pinned] == [announced]
    # The board's own dropbearkey agrees, and the next boot announces the same key.
    public = sh("id-a", "dropbearkey -y -f /data/ssh/dropbear_ed25519_host_key")
    assert base64.b64encode(announced[1]).decode() in public
    mark = lab.console_mark(board)
    lab.power("id-a", "cycle")
    assert hostkey.from_console_log(lab.get("id-a").console_log, mark) == announced


def test_app_data_survives_a_power_cut(two_boards: Built) -> None:
    # The app is told where its data folder is.
    env = sh("id-a", "tr '\\0' '\\n' < /proc/$(pidof hello-c)/environ")
    assert "FLEET_DATA=/data/app" in env.splitlines()
    sh("id-a", "echo 'order 42' >> /data/app/records.txt && sync")
    lab.power("id-a", "cycle")
    assert sh("id-a", "cat /data/app/records.txt") == "order 42\n"
    # The rest of the system stays read-only.
    with lab.session(lab.get("id-a")) as session:
        assert session.exec("touch /etc/x").exit_code != 0


def test_damaged_data_partition_is_reported_and_recreated_on_request(two_boards: Built) -> None:
    name = "id-b"
    before = fingerprint(name)
    sh(name, "echo keep > /data/app/records.txt && sync")
    lab.power(name, "off")
    disk = lab.get(name).disk
    with open(disk, "r+b") as handle:  # the ext superblock sits 1 KiB into the partition
        handle.seek(partition_start(disk, 7) + 1024)
        handle.write(b"\xde\xad" * 512)
    board = lab.power(name, "on")

    assert sh(name, "cat /run/fleet/data-state").strip() == "damaged"
    assert "warning: data partition damaged" in board.console_log.read_text()
    assert fingerprint(name) == before  # the identity did not live only on /data
    assert "tmpfs on /data " in sh(name, "mount")
    assert sh(name, "hostname").strip() == "kiosk-b"
    # `fleet status` tells the user: hostname, host key, data partition state and usage.
    shown = json.loads(fleet("status", name, "--json").stdout)
    assert shown["hostname"] == "kiosk-b" and shown["host_key"] == before
    assert shown["data"]["state"] == "damaged"
    text = fleet("status", name).stdout
    assert "kiosk-b" in text and before in text and "data partition: damaged" in text

    # Asked for on the board: the flag on partition 1, then a reboot recreates it.
    sh(name, "mount -o remount,rw /boot/firmware && touch /boot/firmware/fleet/data-recreate"
             " && mount -o remount,ro /boot/firmware")
    lab.power(name, "cycle")
    assert sh(name, "cat /run/fleet/data-state").strip() == "recreated"
    assert "/dev/vda7 on /data type ext4" in sh(name, "mount")
    assert sh(name, "ls /boot/firmware/fleet/").split().count("data-recreate") == 0
    assert fingerprint(name) == before
    lab.power(name, "cycle")
    assert sh(name, "cat /run/fleet/data-state").strip() == "ok"


def test_data_and_identity_survive_an_update(
    two_boards: Built, tmp_path_factory: pytest.TempPathFactory
) -> None:
    base = tmp_path_factory.mktemp("hello-v2")
    app = copy_example(
        "hello-c", base / "app", version="2.0.0", release=2, lock_from=two_boards.app
    )
    fleet("build", "--board", "qemu-virt-arm64", "--project", app, "--out", base / "out",
          "--key", two_boards.key, "--dev")
    name = "id-a"
    before = fingerprint(name)
    sh(name, "echo 'order 43' >> /data/app/update-records.txt && sync")
    fleet("update", name, base / "out" / "release", "--trust", two_boards.pub)
    assert sh(name, "cat /run/fleet/slot").strip() == "B"
    assert sh(name, "cat /data/app/update-records.txt") == "order 43\n"
    assert fingerprint(name) == before
    assert sh(name, "hostname").strip() == "kiosk-a"
