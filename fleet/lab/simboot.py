"""The power supply, bootloader and serial line of simulated boards: one detached process
per ``fleet lab up --sim`` (and per ``power on`` of a board whose process is gone), a
thread per board.

Each boot: the boot script's rules (fleet.bootstate's ``next_boot``, the model the U-Boot
script is tested against) pick the slot from the boot state on the board's partition 1 and
count a trial attempt there; the kernel command line, a new boot id and the booted slot's
app.env are written into the tree; then the board's init runs in a PID and mount namespace
of its own. The agent's reboot(2) ends that namespace (reboot(2): in a PID namespace other
than the first it terminates the namespace's init), and the loop boots the board again.

Control is by files in the board's state folder, so any process can drive it:
``power-off`` (stay off until removed), ``stop`` (end this board's loop), ``fault``
(``unhealthy`` or ``hang``: the app's health check fails or never answers); ``sim.json``
holds the board's settings (boot delay, health deadline).
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
import tty
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from fleet import atomic, bootstate
from fleet.image.rootfs import APP_UID, shell_env

UNHEALTHY_MARK = b"fleet-sim: unhealthy"
FACTORY = ("1", "0.0.0-sim")
# Read as the app's user: healthy, unhealthy, or hang (the check never answers).
HEALTH_COMMAND = (
    'read -r h < /etc/fleet/sim-health; [ "$h" = hang ] && sleep 600; [ "$h" = healthy ]'
)
ROOT_PART = {"A": 5, "B": 6}
# What fleet build writes for @DISKID@ differs per image; the agent never reads it.
DISK_ID = "f1ee7000"
# The namespace's first process ($0 the tree, $1 the board's pty): the pty where the
# tree's /dev/console is, the host's /proc/uptime where the tree has its own proc (health
# deadlines need a clock that moves), a fresh /run, then the board's init.
NS_INIT = (
    'mount --bind "$1" "$0/dev/console" && '
    'mount --bind /proc/uptime "$0/proc/uptime" && '
    'mount -t tmpfs -o size=16m,mode=0755 tmpfs "$0/run" && '
    'exec chroot "$0" /bin/sh /etc/fleet/sim-init'
)


@dataclass(frozen=True)
class Settings:
    boot_delay: float = 0.3  # seconds between a board's end and its next boot
    health_timeout: int = 10  # FLEET_HEALTH_TIMEOUT: the trial's deadline


def save_settings(state_dir: Path, settings: Settings) -> None:
    atomic.write_text(state_dir / "sim.json", json.dumps(asdict(settings)) + "\n")


def load_settings(state_dir: Path) -> Settings:
    try:
        data = json.loads((state_dir / "sim.json").read_text())
        return Settings(float(data["boot_delay"]), int(data["health_timeout"]))
    except (OSError, ValueError, KeyError, TypeError):
        return Settings()


def _firmware_write(firmware: Path, name: str, data: bytes) -> bool:
    """Write a boot state copy on the read-only partition 1, as U-Boot's fatwrite does."""
    try:
        subprocess.run(["mount", "-o", "remount,rw", str(firmware)], check=True)
        try:
            (firmware / "fleet").mkdir(exist_ok=True)
            (firmware / name).write_bytes(data)
            os.sync()
        finally:
            subprocess.run(["mount", "-o", "remount,ro", str(firmware)], check=False)
    except (OSError, subprocess.CalledProcessError):
        return False
    return True


def bootloader(state_dir: Path) -> tuple[str, bool, bootstate.BootState, list[str]]:
    """One boot's slot choice: (slot, whether it is a trial boot, the state it boots with,
    the lines the boot script would print)."""
    firmware = state_dir / "tree/boot/firmware"
    copies: list[bytes | None] = []
    for rel in bootstate.COPIES:
        try:
            copies.append((firmware / rel).read_bytes())
        except OSError:
            copies.append(None)
    state, source = bootstate.current((copies[0], copies[1]))
    after, slot, writes = state.next_boot()
    said = []
    if writes:
        target = bootstate.COPIES[bootstate.write_target(source)]
        if not _firmware_write(firmware, target, bootstate.encode(after)):
            # An attempt that cannot be counted is not made (the boot script's rule).
            said.append(f"cannot write the boot state; booting the default slot {state.default}")
            return state.default, False, state, [*said, f"booting slot {state.default}"]
        if slot != after.default:
            said.append(f"trial boot of slot {slot} (attempts left after this one: {after.tries})")
        else:
            said.append(
                f"slot {state.trial} used its boot attempts without committing; "
                f"back to slot {after.default}"
            )
    return slot, slot != after.default, after, [*said, f"booting slot {slot}"]


def kernel_args(slot: str, trial: bool) -> str:
    """The command line the boot script gives the kernel, and the lab's fleet.watchdog=0
    (fleet_bootargs from partition 1: a sim board has no watchdog)."""
    root = f"fleet.root=PARTUUID={DISK_ID}-0{ROOT_PART[slot]}"
    return (
        f"console=ttyAMA0 panic=5 loglevel=4 cryptomgr.notests fleet.slot={slot} {root}"
        + (" fleet.trial=1" if trial else "")
        + " fleet.watchdog=0"
    )


def prepare(
    state_dir: Path, slot: str, trial: bool, state: bootstate.BootState, settings: Settings
) -> None:
    """What the kernel and the booted rootfs tell the board's userspace."""
    tree = state_dir / "tree"
    atomic.write_text(tree / "proc/cmdline", kernel_args(slot, trial) + "\n")
    atomic.write_text(tree / "proc/sys/kernel/random/boot_id", f"{uuid.uuid4()}\n")
    info = state.slot_info(slot)
    release, version = FACTORY
    if info:
        release, _, rest = info.partition(":")
        version = rest.partition(":")[0]
    atomic.write_bytes(
        tree / "etc/fleet/app.env",
        shell_env(
            {
                "FLEET_APP_NAME": "sim",
                "FLEET_APP_VERSION": version,
                "FLEET_RELEASE": release,
                "FLEET_HEALTH_TIMEOUT": str(settings.health_timeout),
                "FLEET_HEALTH_CHECK_TIMEOUT": str(min(3, settings.health_timeout)),
                "FLEET_HEALTH_MAX_EXITS": "1",
                "FLEET_HEALTH_HTTP": "",
                "FLEET_HEALTH_COMMAND": HEALTH_COMMAND,
                "FLEET_APP_UID": str(APP_UID),
            }
        ),
    )
    atomic.write_text(tree / "etc/fleet/sim-health", health(state_dir, slot) + "\n")


def health(state_dir: Path, slot: str) -> str:
    """The app's health on this boot: the board's fault if it has one, else what the
    booted rootfs says (a payload that starts with UNHEALTHY_MARK is an app that fails)."""
    with contextlib.suppress(OSError):
        fault = (state_dir / "fault").read_text().strip()
        if fault in ("unhealthy", "hang"):
            return fault
    try:
        with (state_dir / f"parts/p{ROOT_PART[slot]}.img").open("rb") as part:
            head = part.read(len(UNHEALTHY_MARK))
    except OSError:
        head = b""
    return "unhealthy" if head == UNHEALTHY_MARK else "healthy"


class Consoles:
    """The boards' serial lines: per board a pty whose slave the tree's /dev/console is
    bound to at each boot (a plain file would be truncated by every `> /dev/console`), and
    one thread that appends what comes out of each master to that board's console.log."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        threading.Thread(target=self._pump, name="consoles", daemon=True).start()

    def open(self, log: int) -> tuple[int, str]:
        """A new line whose output goes to the file LOG: (its slave's fd, its path)."""
        master, slave = os.openpty()
        tty.setraw(slave)  # no \r before each \n: the log holds what the board wrote
        self._selector.register(master, selectors.EVENT_READ, log)
        return slave, os.ttyname(slave)

    def _pump(self) -> None:
        while True:
            for key, _ in self._selector.select(timeout=1.0):
                try:
                    data = os.read(key.fd, 65536)
                except OSError:  # EIO: the board's slave is closed, its loop has ended
                    data = b""
                if data:
                    os.write(key.data, data)
                else:
                    self._selector.unregister(key.fd)
                    os.close(key.fd)


def _boot_once(state_dir: Path, settings: Settings, log: int, slave: int, pty: str) -> int:
    slot, trial, state, said = bootloader(state_dir)
    prepare(state_dir, slot, trial, state, settings)
    os.write(log, "".join(f"fleet: {line}\n" for line in said).encode())
    proc = subprocess.Popen(
        [
            "unshare",
            "--pid",
            "--mount",
            "--fork",
            "--kill-child",
            "--propagation",
            "private",
            "/bin/sh",
            "-c",
            NS_INIT,
            str(state_dir / "tree"),
            pty,
        ],
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
    )
    atomic.write_text(state_dir / "board.pid", f"{proc.pid}\n")
    return proc.wait()


def _stopping(state_dir: Path) -> bool:
    # A board removed under us (fleet lab down --rm) is stopped too.
    return (state_dir / "stop").exists() or not (state_dir / "board.json").exists()


def run_board(state_dir: Path, consoles: Consoles) -> None:
    settings = load_settings(state_dir)
    log = os.open(state_dir / "console.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    slave, pty = consoles.open(log)
    try:
        while not _stopping(state_dir):
            (state_dir / "halted").unlink(missing_ok=True)
            if (state_dir / "power-off").exists():
                time.sleep(0.1)
                continue
            _boot_once(state_dir, settings, log, slave, pty)
            # The namespace's last output is read before the line that ends it.
            time.sleep(0.05)
            os.write(log, b"fleet: sim board restarts\n")
            time.sleep(settings.boot_delay)
    finally:
        os.close(slave)
        with contextlib.suppress(OSError):
            (state_dir / "board.pid").unlink(missing_ok=True)
            # fleet lab down waits for this before it frees the board's loops and mount.
            (state_dir / "halted").write_text("")


def main(argv: list[str]) -> int:
    """``python -m fleet.lab.simboot STATE_DIR...``"""
    # The boards' programs (mount, unshare, chroot) from the system, not from whatever
    # PATH the caller had (a virtualenv's or a version manager's shims).
    os.environ["PATH"] = "/usr/sbin:/usr/bin:/sbin:/bin"
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    consoles = Consoles()
    threads = [
        threading.Thread(target=run_board, args=(Path(d), consoles), name=Path(d).name)
        for d in argv
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
