"""The on-board agent's rpi-tryboot path, run as the board runs it (chroot into an image-like
tree with busybox and loop devices, tests/agent_tree.py) against a model of
the Pi firmware's documented rules (tests/tryboot_model.py): install, trial by the
one-shot tryboot flag, commit by rewriting autoboot.txt, rollback, and power cuts."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet import bootstate
from fleet.trust import generate_key
from fleet.update.machine import manifest_upload
from tests.agent_tree import AgentTree, available, make_release
from tests.tryboot_model import PiFirmware

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not available(), reason="needs root, busybox, signify-openbsd, gcc"),
]


class Board:
    """A Pi 4 as the agent sees it (tests/agent_tree.py), booted by the firmware model."""

    def __init__(self, root: Path, key: Path, pub: Path) -> None:
        self.tree = AgentTree(root, [pub], board="rpi4b", boot_method="rpi-tryboot")
        self.root = root
        self.fw = self.tree.firmware
        # fleet build's autoboot.txt, as the firmware partition holds it.
        from fleet.image.bootscript import tryboot_autoboot_txt

        self.write_fw("autoboot.txt", tryboot_autoboot_txt().encode())
        self.key = key
        self.boots = 0
        self.pi = PiFirmware(self.firmware_files())

    def write_fw(self, name: str, data: bytes | None) -> None:
        """Change partition 1 from outside (a power cut's leftovers): it is mounted
        read-only as on the board."""
        subprocess.run(["mount", "-o", "remount,rw", str(self.fw)], check=True)
        try:
            if data is None:
                (self.fw / name).unlink()
            else:
                (self.fw / name).write_bytes(data)
        finally:
            subprocess.run(["mount", "-o", "remount,ro", str(self.fw)], check=True)

    def set_app(self, version: str, release: int) -> None:
        self.tree.set_app(version, release)

    def firmware_files(self) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in self.fw.iterdir() if p.is_file()}

    def agent(self, *args: str, data: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        return self.tree.agent(*args, data=data)

    def status(self) -> dict[str, object]:
        import json

        proc = self.agent("status")
        assert proc.returncode == 0, proc.stderr
        return dict(json.loads(proc.stdout))

    def boot(self) -> tuple[int, bool]:
        """The firmware boots per the model; the device tree tells the system what it did."""
        self.pi.firmware_files = self.firmware_files()
        partition, tryboot = self.pi.boot()
        self.boots += 1
        self.tree.set_device_tree(partition, tryboot)
        self.tree.set_boot_id(f"00000000-0000-0000-0000-{self.boots:012d}")
        return partition, tryboot

    def requests(self) -> list[str]:
        return self.tree.reboots()

    def follow_reboot(self) -> tuple[int, bool]:
        """Hand the agent's last reboot request to the firmware, then boot."""
        requests = self.requests()
        self.pi.reboot("0 tryboot" if requests[-1] == "fleet-reboot 0 tryboot" else "")
        return self.boot()

    def install(self, release: Path) -> None:
        proc = self.agent("install-manifest", data=manifest_upload(release))
        assert proc.returncode == 0, proc.stderr
        for name in ("boot", "rootfs"):
            proc = self.agent("install", name, data=(release / f"{name}.img").read_bytes())
            assert proc.returncode == 0, proc.stderr

    def close(self) -> None:
        self.tree.close()


@pytest.fixture()
def board(tmp_path: Path) -> Iterator[Board]:
    keys = generate_key(tmp_path / "keys", "release")
    pi = Board(tmp_path / "board", keys.secret, keys.public)
    try:
        assert pi.boot() == (2, False)
        yield pi
    finally:
        pi.close()


def test_trial_commit_and_rollback_follow_the_firmware_rules(board: Board, tmp_path: Path) -> None:
    state = board.status()
    assert (state["running_slot"], state["default_slot"]) == ("A", "A")

    board.install(make_release(tmp_path / "r2", board.key, 2, "rpi4b"))
    assert board.agent("try").returncode == 0
    assert board.follow_reboot() == (3, True)  # the firmware's one-shot trial of slot B
    board.set_app("2.0.0", 2)
    state = board.status()
    assert (state["running_slot"], state["default_slot"], state["trial_boot"]) == ("B", "A", True)
    # Nothing is installed while a trial runs: slot A is the only committed one.
    refused = board.agent("install-manifest", data=b"")
    assert refused.returncode == 3 and b"not committed yet" in refused.stderr

    assert board.agent("commit").returncode == 0
    assert (board.fw / "autoboot.txt").stat().st_size <= 512
    assert board.boot() == (3, False)  # committed: B is the default from now on
    state = board.status()
    assert (state["running_slot"], state["default_slot"], state["floor"]) == ("B", "B", 2)
    # The agent's busybox-written copies are valid in U-Boot's CRC'd form too.
    copies = tuple(
        p.read_bytes() if p.exists() else None
        for p in (board.fw / "fleet" / "bootstate.1", board.fw / "fleet" / "bootstate.2")
    )
    saved, source = bootstate.current((copies[0], copies[1]))
    assert source is not None and saved.floor == 2 and saved.slot_b.startswith("2:2.0.0:")

    # A failed trial of slot A: the health watcher rolls back with a normal reboot.
    board.install(make_release(tmp_path / "r3", board.key, 3, "rpi4b"))
    assert board.agent("try").returncode == 0
    board.set_app("3.0.0", 3)
    assert board.follow_reboot() == (2, True)
    assert board.agent("rollback", "health check failed").returncode == 0
    board.set_app("2.0.0", 2)
    assert board.follow_reboot() == (3, False)
    assert board.status()["default_slot"] == "B"


def test_power_cuts_never_leave_the_board_without_its_committed_slot(
    board: Board, tmp_path: Path
) -> None:
    release = make_release(tmp_path / "r2", board.key, 2, "rpi4b")
    board.install(release)
    assert board.agent("try").returncode == 0
    board.pi.power_cut()  # before the reboot request reached the firmware
    assert board.requests()[-1] == "fleet-reboot 0 tryboot"
    assert board.boot() == (2, False)

    assert board.agent("try").returncode == 0
    assert board.follow_reboot() == (3, True)
    board.pi.power_cut()  # during the trial boot
    assert board.boot() == (2, False)

    # Commit cut after the new autoboot.txt was written beside the old one (autoboot.tmp)
    # but before the rename: the firmware reads only autoboot.txt.
    assert board.agent("try").returncode == 0
    assert board.follow_reboot() == (3, True)
    old = (board.fw / "autoboot.txt").read_bytes()
    assert board.agent("commit").returncode == 0
    new = (board.fw / "autoboot.txt").read_bytes()
    assert new != old and not (board.fw / "autoboot.tmp").exists()
    board.write_fw("autoboot.txt", old)
    board.write_fw("autoboot.tmp", new)
    assert board.boot() == (2, False)
    # ... and after the rename, the new default.
    board.write_fw("autoboot.txt", new)
    board.write_fw("autoboot.tmp", None)
    assert board.boot() == (3, False)
