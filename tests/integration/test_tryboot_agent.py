"""The on-board agent's rpi-tryboot path, run as the board runs it (chroot into an image-like
tree with busybox and loop devices, tests/agent_tree.py) against a model of
the Pi firmware's documented rules (tests/tryboot_model.py): install, trial by the
one-shot tryboot flag, commit by rewriting autoboot.txt, rollback, and power cuts.

The reboot request is the real fleet-reboot's reboot(2) call, contained in a PID
namespace; whether the flag then reaches the firmware depends on the kernel, which the
model takes from the kernel image: Raspberry Pi's passes it (modelled: Debian's archive
has none), Debian's, checked here on the package the images carry, drops it."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet import bootstate
from fleet.image import kernel
from fleet.image.debian import cache_dir
from fleet.trust import generate_key
from fleet.update import result
from fleet.update.machine import _judge, _Run, manifest_upload
from fleet.update.status import BoardStatus
from fleet.update.target import Target
from tests.agent_tree import AgentTree, available, make_release
from tests.conftest import Built
from tests.tryboot_model import PiFirmware

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not available(), reason="needs root, busybox, signify-openbsd, gcc"),
]


class Board:
    """A Pi 4 as the agent sees it (tests/agent_tree.py), booted by the firmware model."""

    # A Pi 4 EEPROM bootloader's capabilities: every bit of device-tree.adoc's table set.
    ALL_CAPABILITIES = 0xFF

    def __init__(self, root: Path, key: Path, pub: Path, *, kernel_passes_tryboot: bool,
                 capabilities: int | None = ALL_CAPABILITIES) -> None:
        self.tree = AgentTree(root, [pub], board="rpi4b", boot_method="rpi-tryboot")
        cells = root / "proc/device-tree/chosen/bootloader"
        if capabilities is not None:
            (cells / "capabilities").write_bytes(capabilities.to_bytes(4, "big"))
        self.root = root
        self.fw = self.tree.firmware
        # fleet build's autoboot.txt, as the firmware partition holds it.
        from fleet.image.bootscript import tryboot_autoboot_txt

        self.write_fw("autoboot.txt", tryboot_autoboot_txt().encode())
        self.key = key
        self.release = Path()  # the release last installed by a test
        self.boots = 0
        self.pi = PiFirmware(self.firmware_files(), kernel_passes_tryboot=kernel_passes_tryboot)

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
        # rc.sysinit runs `agent boot` at every boot of a tryboot board.
        booted = self.agent("boot")
        assert booted.returncode == 0, booted.stderr
        return partition, tryboot

    def requests(self) -> list[str]:
        return self.tree.reboots()

    def follow_reboot(self) -> tuple[int, bool]:
        """Hand the agent's last reboot request to the firmware, then boot."""
        last = self.requests()[-1]
        # The argument the kernel got in reboot(2), or none (busybox's reboot).
        syscall = last.startswith("reboot(2)")
        self.pi.reboot(last.removeprefix("reboot(2) RESTART2 ") if syscall else "")
        return self.boot()

    def install(self, release: Path) -> None:
        proc = self.agent("install-manifest", data=manifest_upload(release))
        assert proc.returncode == 0, proc.stderr
        for name in ("boot", "rootfs"):
            proc = self.agent("install", name, data=(release / f"{name}.img").read_bytes())
            assert proc.returncode == 0, proc.stderr

    def close(self) -> None:
        self.tree.close()


@pytest.fixture(scope="module")
def debian_kernel(tmp_path_factory: pytest.TempPathFactory, hello_virt: Built) -> kernel.KernelTree:
    """The kernel of Debian's package that fleet's images carry, from the build's pins."""
    import json

    pins = json.loads((hello_virt.app / "fleet.lock").read_text())["packages"]
    deb = next(p for p in pins if p["name"].startswith("linux-image-") and "arm64" in p["name"]
               and p["name"] != "linux-image-arm64")
    found = list(cache_dir().rglob(deb["filename"]))
    assert found, deb["filename"]
    root = tmp_path_factory.mktemp("kernel")
    subprocess.run(["dpkg-deb", "-x", found[0], root], check=True)
    return kernel.find_kernel(root)


def make_board(tmp_path: Path, **options: object) -> Board:
    keys = generate_key(tmp_path / "keys", "release")
    pi = Board(tmp_path / "board", keys.secret, keys.public, **options)  # type: ignore[arg-type]
    assert pi.boot() == (2, False)
    return pi


@pytest.fixture()
def board(tmp_path: Path) -> Iterator[Board]:
    """A Pi 4 whose kernel passes the flag (Raspberry Pi's)."""
    pi = make_board(tmp_path, kernel_passes_tryboot=True)
    try:
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
    # The real fleet-reboot asked the kernel for RESTART2 with the firmware's argument.
    assert board.requests()[-2:] == ["shutdown ", "reboot(2) RESTART2 0 tryboot"]
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


def judge(board: Board, release: int, slot: str, origin: str) -> tuple[str, str]:
    """What `fleet update` concludes from the board's status after the trial reboot."""
    from fleet.release import load_manifest

    target = Target("pi", "127.0.0.1", 22, "root", Path("key"), Path("known_hosts"))
    run = _Run(target, load_manifest(board.release), 0.0, slot=slot, origin=origin)
    assert run.release.release == release
    verdict = _judge(run, BoardStatus(board.status()))
    assert verdict is not None
    return verdict.outcome.value, verdict.reason


def test_a_kernel_that_drops_the_flag_is_reported_as_not_honoured(
    tmp_path: Path, debian_kernel: kernel.KernelTree
) -> None:
    passes = kernel.passes_tryboot(debian_kernel)
    assert passes is False  # Debian's kernel, as its image and modules hold it
    pi = make_board(tmp_path, kernel_passes_tryboot=passes)
    try:
        pi.release = make_release(tmp_path / "r2", pi.key, 2, "rpi4b")
        pi.install(pi.release)
        assert pi.agent("try").returncode == 0
        # The firmware never got the flag: a normal boot of the default slot.
        assert pi.follow_reboot() == (2, False)
        state = pi.status()
        slots = (state["running_slot"], state["default_slot"], state["trial_boot"])
        assert slots == ("A", "A", False)
        assert str(state["last_trial"]).endswith("tryboot-not-honoured")
        assert judge(pi, 2, "B", "A") == ("rolled-back", result.TRYBOOT_NOT_HONOURED)
        log = (pi.root / "data/fleet/agent.log").read_text()
        assert "tryboot flag not honoured" in log
    finally:
        pi.close()


@pytest.mark.parametrize("capabilities", [None, 0x0B])  # none reported; TRYBOOT but not _A_B
def test_try_is_refused_by_a_bootloader_without_tryboot_a_b(
    tmp_path: Path, capabilities: int | None
) -> None:
    pi = make_board(tmp_path, kernel_passes_tryboot=True, capabilities=capabilities)
    try:
        pi.install(make_release(tmp_path / "r2", pi.key, 2, "rpi4b"))
        before = pi.firmware_files()
        refused = pi.agent("try")
        assert refused.returncode == 3
        assert b"capabilities" in refused.stderr and b"lack TRYBOOT_A_B" in refused.stderr
        assert pi.requests() == []  # no reboot was asked for
        assert pi.firmware_files() == before
        assert not (pi.root / "data/fleet/trial").exists()
    finally:
        pi.close()


def test_commit_needs_the_tryboot_partition_booted_with_the_flag(
    board: Board, tmp_path: Path
) -> None:
    board.install(make_release(tmp_path / "r2", board.key, 2, "rpi4b"))
    assert board.agent("try").returncode == 0
    board.requests()
    # A boot with the flag, but of partition 2 (a firmware asked for it by number).
    board.pi.tryboot_flag, board.pi.reboot_partition = True, 2
    assert board.boot() == (2, True)
    refused = board.agent("commit")
    assert refused.returncode == 3 and b"not the [tryboot] partition 3" in refused.stderr
    assert board.status()["default_slot"] == "A"


@pytest.mark.parametrize("damage", ["missing", "torn"])
def test_a_missing_or_torn_autoboot_txt_is_restored_from_the_boot_state(
    board: Board, tmp_path: Path, damage: str
) -> None:
    board.install(make_release(tmp_path / "r2", board.key, 2, "rpi4b"))
    assert board.agent("try").returncode == 0
    assert board.follow_reboot() == (3, True)
    board.set_app("2.0.0", 2)
    assert board.agent("commit").returncode == 0
    good = (board.fw / "autoboot.txt").read_bytes()
    board.write_fw("autoboot.txt", None if damage == "missing" else good[:30])
    # The firmware falls back to the first partition with a start file: slot A.
    board.set_app("1.0.0", 1)
    assert board.boot() == (2, False)
    assert (board.fw / "autoboot.txt").read_bytes() == good
    assert board.requests()[-1] == "reboot "  # back into the committed slot
    board.set_app("2.0.0", 2)
    assert board.boot() == (3, False)
    state = board.status()
    assert (state["running_slot"], state["default_slot"]) == ("B", "B")
