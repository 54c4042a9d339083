"""The Raspberry Pi U-Boot path end to end on the one Pi that QEMU runs (raspi3b, Debian's
rpi_3 U-Boot from the SD card, the network over the Pi's USB port): the boot, one real A/B
update and one automatic rollback, through the same boot script and agent that the Pi 4,
CM4 and Zero 2 W images carry."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet import lab, provision
from fleet.image.bootscript import BOARD_FILE
from fleet.update import machine
from fleet.update.target import resolve
from tests.conftest import Built, copy_example, fleet
from tests.virtual.test_boot import wait_for_console

pytestmark = pytest.mark.virtual

BOARD = "pi3"


def _build(base: Path, hello_virt: Built, number: int, edits: dict[str, str]) -> Path:
    app = copy_example("hello-c", base / f"app{number}", version=f"{number}.0.0",
                       release=number, lock_from=hello_virt.app, edits=edits)
    out = base / f"out{number}"
    fleet("build", "--board", "rpi3b", "--project", app, "--out", out,
          "--key", hello_virt.key, "--dev")
    return out


@pytest.fixture(scope="module")
def pi3(tmp_path_factory: pytest.TempPathFactory, hello_virt: Built) -> Iterator[dict[str, Path]]:
    base = tmp_path_factory.mktemp("rpi3b")
    builds = {
        "v1": _build(base, hello_virt, 1, {}),
        "v2": _build(base, hello_virt, 2, {}),
        # an app that dies at start: its third exit fails the trial without waiting out
        # the deadline (the emulated Pi is slow; every second of it counts)
        "v3": _build(base, hello_virt, 3, {'command = "/app/bin/hello-c"':
                                           'command = "/bin/false"',
                                           "timeout = 60": "timeout = 20"}),
    }
    up = json.loads(fleet("lab", "up", "--board", "rpi3b", "--disk", builds["v1"] / "disk.img",
                          "--name", BOARD, "--timeout", "300", "--json", timeout=400).stdout)
    builds["console"] = Path(up["console_log"])
    yield builds
    fleet("lab", "down", BOARD, check=False)


def update(release: Path, pub: Path) -> tuple[dict[str, object], str, int]:
    proc = fleet("update", BOARD, release, "--trust", pub, "--json", check=False, timeout=900)
    return json.loads(proc.stdout), proc.stderr, proc.returncode


def test_raspberry_pi_3_boots_to_a_healthy_app(pi3: dict[str, Path]) -> None:
    console = wait_for_console(pi3["console"], "fleet: app healthy", 240)
    assert "fleet: booting slot A" in console  # Debian's U-Boot ran fleet's boot script
    assert f"host {BOARD}" in console or "host rpi3b" in console
    # U-Boot no longer scans USB, so Linux gets the port's connect event.
    assert "Not connected" not in console
    with lab.session(lab.get(BOARD)) as session:
        cmdline = session.exec("cat /proc/cmdline").stdout.decode()
        mounts = session.exec("cat /proc/mounts").stdout.decode()
    # The root is named by PARTUUID, and the system found its partitions from it.
    assert "fleet.root=PARTUUID=464c4554-05" in cmdline and "mmcblk" not in cmdline
    assert "/dev/mmcblk0p1 /boot/firmware vfat" in mounts
    assert "/dev/mmcblk0p7 /data ext4" in mounts
    # The emulator's one kernel argument is on the lab's copy of the disk only.
    assert "fleet.watchdog=0" in cmdline
    assert provision.read(pi3["v1"] / "disk.img", BOARD_FILE) is not None
    assert b"fleet_bootargs" not in (provision.read(pi3["v1"] / "disk.img", BOARD_FILE) or b"")


def test_the_lab_sets_and_clears_its_kernel_arguments(pi3: dict[str, Path], tmp_path: Path) -> None:
    """What `fleet lab down` does to an in-place disk, which may be a real card."""
    import shutil

    from fleet.lab import disk

    card = tmp_path / "card.img"
    shutil.copyfile(pi3["v1"] / "disk.img", card)
    before = provision.read(card, BOARD_FILE)
    disk.set_kernel_args(card, ("fleet.watchdog=0",))
    text = provision.read(card, BOARD_FILE) or b""
    assert text.endswith(b"\nfleet_bootargs=fleet.watchdog=0\n")
    disk.set_kernel_args(card, ())
    assert provision.read(card, BOARD_FILE) == before


def test_a_b_update_and_automatic_rollback_over_the_usb_network(
    pi3: dict[str, Path], hello_virt: Built
) -> None:
    result, err, code = update(pi3["v2"] / "release", hello_virt.pub)
    assert code == 0, err
    assert (result["outcome"], result["running_slot"], result["running_version"]) == (
        "updated", "B", "2.0.0")
    now = machine.board_status(resolve(BOARD))
    assert now.committed and now.floor == 2 and now.health == "healthy", now.raw

    offset = pi3["console"].stat().st_size
    result, err, code = update(pi3["v3"] / "release", hello_virt.pub)
    assert code == 10, err
    assert (result["outcome"], result["reason"]) == ("rolled-back", "health failed")
    console = pi3["console"].read_bytes()[offset:].decode(errors="replace")
    assert "fleet: trial boot of slot A" in console and "fleet: booting slot B" in console
    now = machine.board_status(resolve(BOARD))
    assert (now.app_version, now.running_slot, now.committed) == ("2.0.0", "B", True), now.raw
