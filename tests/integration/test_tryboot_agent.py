"""The on-board agent's rpi-tryboot path, run with busybox on the host against a model of
the Pi firmware's documented rules (tests/tryboot_model.py): install, trial by the
one-shot tryboot flag, commit by rewriting autoboot.txt, rollback, and power cuts."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from fleet import bootstate
from fleet.release import Health, Manifest, Payload, sha256_file, write_manifest
from fleet.trust import generate_key, sign_release
from fleet.update.machine import manifest_upload
from tests.tryboot_model import PiFirmware

BUSYBOX = shutil.which("busybox")
SIGNIFY = shutil.which("signify-openbsd")
REPO = Path(__file__).resolve().parents[2]
AGENT = REPO / "fleet" / "device" / "agent"
APPLETS = [
    "sh",
    "sed",
    "od",
    "sha256sum",
    "tr",
    "grep",
    "wc",
    "cut",
    "printf",
    "head",
    "tail",
    "gzip",
    "cat",
    "date",
    "mkdir",
    "rm",
    "dd",
    "sync",
    "tar",
    "tee",
    "sleep",
    "mv",
    "echo",
    "df",
    "hostname",
    "touch",
    "base64",
    "kill",
]

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(BUSYBOX is None or SIGNIFY is None, reason="busybox/signify missing"),
]


class Board:
    """A Pi's partitions as folders and files, the agent's paths pointed at them."""

    def __init__(self, root: Path, key: Path, pub: Path) -> None:
        self.root = root
        self.bin = root / "bin"
        self.fw = root / "fw"
        self.dt = root / "dt"
        self.etc = root / "etc"
        for folder in (
            self.bin,
            self.fw,
            self.dt,
            self.etc / "keys",
            root / "run",
            root / "data",
            root / "dev",
        ):
            folder.mkdir(parents=True)
        for applet in APPLETS:
            (self.bin / applet).symlink_to(str(BUSYBOX))
        (self.bin / "signify-openbsd").symlink_to(str(SIGNIFY))
        self.reboots = root / "reboots"
        stub = root / "reboot-stub"
        stub.write_text(f'#!{BUSYBOX} sh\necho "$*" >> {self.reboots}\n')
        stub.chmod(0o755)
        shutil.copy(pub, self.etc / "keys" / pub.name)
        shutil.copy(REPO / "fleet" / "device" / "verify-release.sh", self.etc / "verify-release")
        (self.etc / "revoked").write_text("")
        (self.etc / "threshold").write_text("1\n")
        (self.etc / "board.env").write_text(
            "FLEET_BOARD=rpi4b\nFLEET_BOOT_METHOD=rpi-tryboot\n"
            f"FLEET_DATA_DEV={root}/dev/mmcblk0p7\n"
        )
        self.set_app("1.0.0", 1)
        (root / "cmdline").write_text("console=serial0\n")
        # fleet build's autoboot.txt, as the firmware partition holds it.
        from fleet.image.bootscript import tryboot_autoboot_txt

        (self.fw / "autoboot.txt").write_text(tryboot_autoboot_txt())
        self.key = key
        self.pi = PiFirmware(self.firmware_files())

    def set_app(self, version: str, release: int) -> None:
        (self.etc / "app.env").write_text(
            f"FLEET_APP_NAME=hello\nFLEET_APP_VERSION={version}\nFLEET_RELEASE={release}\n"
        )

    def firmware_files(self) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in self.fw.iterdir() if p.is_file()}

    def agent(self, *args: str, data: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        env = {
            "FLEET_ETC": str(self.etc),
            "FLEET_RUN": str(self.root / "run"),
            "FLEET_DATA_DIR": str(self.root / "data"),
            "FLEET_FIRMWARE": str(self.fw),
            "FLEET_CMDLINE": str(self.root / "cmdline"),
            "FLEET_DT_BOOTLOADER": str(self.dt),
            "FLEET_PATH": str(self.bin),
            "FLEET_REBOOT": str(self.root / "reboot-stub"),
            "PATH": str(self.bin),
        }
        return subprocess.run(
            [str(self.bin / "sh"), str(AGENT), *args],
            input=data,
            capture_output=True,
            env=env,
            timeout=60,
            check=False,
        )

    def status(self) -> dict[str, object]:
        import json

        proc = self.agent("status")
        assert proc.returncode == 0, proc.stderr
        return dict(json.loads(proc.stdout))

    def boot(self) -> tuple[int, bool]:
        """The firmware boots per the model; the device tree tells the system what it did."""
        self.pi.firmware_files = self.firmware_files()
        partition, tryboot = self.pi.boot()
        (self.dt / "partition").write_bytes(partition.to_bytes(4, "big"))
        (self.dt / "tryboot").write_bytes(int(tryboot).to_bytes(4, "big"))
        return partition, tryboot

    def follow_reboot(self) -> tuple[int, bool]:
        """Hand the agent's last reboot request to the firmware, then boot."""
        requests = self.reboots.read_text().splitlines()
        self.reboots.unlink()
        self.pi.reboot("0 tryboot" if requests[-1] == "tryboot" else "")
        return self.boot()

    def install(self, release: Path) -> None:
        proc = self.agent("install-manifest", data=manifest_upload(release))
        assert proc.returncode == 0, proc.stderr
        for name in ("boot", "rootfs"):
            proc = self.agent("install", name, data=(release / f"{name}.img").read_bytes())
            assert proc.returncode == 0, proc.stderr


def make_release(folder: Path, key: Path, number: int) -> Path:
    folder.mkdir()
    payloads = []
    for name in ("boot", "rootfs"):
        path = folder / f"{name}.img"
        path.write_bytes(os.urandom(3000 + number))
        payloads.append(Payload(name, path.name, path.stat().st_size, sha256_file(path)))
    manifest = Manifest(
        app="hello",
        version=f"{number}.0.0",
        release=number,
        board="rpi4b",
        arch="aarch64",
        payloads=tuple(payloads),
        health=Health("/health", None, 8080, 30),
    )
    write_manifest(folder, manifest)
    sign_release(folder, key)
    return folder


@pytest.fixture()
def board(tmp_path: Path) -> Board:
    keys = generate_key(tmp_path / "keys", "release")
    pi = Board(tmp_path / "board", keys.secret, keys.public)
    assert pi.boot() == (2, False)
    return pi


def test_trial_commit_and_rollback_follow_the_firmware_rules(board: Board, tmp_path: Path) -> None:
    state = board.status()
    assert (state["running_slot"], state["default_slot"]) == ("A", "A")

    board.install(make_release(tmp_path / "r2", board.key, 2))
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
    board.install(make_release(tmp_path / "r3", board.key, 3))
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
    release = make_release(tmp_path / "r2", board.key, 2)
    board.install(release)
    assert board.agent("try").returncode == 0
    board.pi.power_cut()  # before the reboot request reached the firmware
    board.reboots.unlink()
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
    (board.fw / "autoboot.txt").write_bytes(old)
    (board.fw / "autoboot.tmp").write_bytes(new)
    assert board.boot() == (2, False)
    # ... and after the rename, the new default.
    (board.fw / "autoboot.tmp").rename(board.fw / "autoboot.txt")
    assert board.boot() == (3, False)
