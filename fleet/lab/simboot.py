"""The power supply and bootloader of simulated boards: one detached process per
``fleet lab up --sim``, a thread per board.

Each boot: the boot script's rules (fleet.bootstate's ``next_boot``, the model the U-Boot
script is tested against) pick the slot from the boot state on the board's partition 1 and
count a trial attempt there; the kernel command line, a new boot id and the booted slot's
app.env are written into the tree; then the board's init runs in a PID and mount namespace
of its own. The agent's reboot(2) ends that namespace (reboot(2): in a PID namespace other
than the first it terminates the namespace's init), and the loop boots the board again.

Control is by files in the board's state folder, so any process can drive it:
``power-off`` (stay off until removed), ``stop`` (end this board's loop), ``fault``
(``unhealthy`` or ``hang``: the app's health check fails or never answers).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from fleet import atomic, bootstate
from fleet.image.rootfs import APP_UID, shell_env

UNHEALTHY_MARK = b"fleet-sim: unhealthy"
FACTORY = ("1", "0.0.0-sim")
HEALTH_TIMEOUT = 10
# Read as the app's user: healthy, unhealthy, or hang (the check never answers).
HEALTH_COMMAND = (
    'read -r h < /etc/fleet/sim-health; [ "$h" = hang ] && sleep 600; [ "$h" = healthy ]'
)
ROOTFS_PART = {"A": 5, "B": 6}
# The namespace's first process: the host's /proc/uptime where the tree has its own proc
# (health deadlines need a clock that moves), a fresh /run, then the board's init.
NS_INIT = (
    'mount --bind /proc/uptime "$0/proc/uptime" && '
    'mount -t tmpfs -o size=16m,mode=0755 tmpfs "$0/run" && '
    'exec chroot "$0" /bin/sh /etc/fleet/sim-init'
)


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


def bootloader(state_dir: Path) -> tuple[str, bool, bootstate.BootState]:
    """One boot's slot choice: (slot, whether it is a trial boot, the state it boots with)."""
    firmware = state_dir / "tree/boot/firmware"
    copies: list[bytes | None] = []
    for rel in bootstate.COPIES:
        try:
            copies.append((firmware / rel).read_bytes())
        except OSError:
            copies.append(None)
    state, source = bootstate.current((copies[0], copies[1]))
    after, slot, writes = state.next_boot()
    if writes:
        target = bootstate.COPIES[bootstate.write_target(source)]
        if not _firmware_write(firmware, target, bootstate.encode(after)):
            # An attempt that cannot be counted is not made (the boot script's rule).
            return state.default, False, state
    return slot, slot != after.default, after


def prepare(state_dir: Path, slot: str, trial: bool, state: bootstate.BootState) -> None:
    """What the kernel and the booted rootfs tell the board's userspace."""
    tree = state_dir / "tree"
    args = f"console=ttyAMA0 fleet.slot={slot} fleet.watchdog=0"
    atomic.write_text(tree / "proc/cmdline", args + (" fleet.trial=1" if trial else "") + "\n")
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
                "FLEET_HEALTH_TIMEOUT": str(HEALTH_TIMEOUT),
                "FLEET_HEALTH_CHECK_TIMEOUT": "3",
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
        with (state_dir / f"parts/p{ROOTFS_PART[slot]}.img").open("rb") as part:
            head = part.read(len(UNHEALTHY_MARK))
    except OSError:
        head = b""
    return "unhealthy" if head == UNHEALTHY_MARK else "healthy"


def _boot_once(state_dir: Path, console: int) -> subprocess.Popen[bytes]:
    slot, trial, state = bootloader(state_dir)
    prepare(state_dir, slot, trial, state)
    os.write(console, f"fleet: sim boot of slot {slot}{' on trial' if trial else ''}\n".encode())
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
        ],
        stdin=subprocess.DEVNULL,
        stdout=console,
        stderr=console,
        start_new_session=True,
    )
    atomic.write_text(state_dir / "board.pid", f"{proc.pid}\n")
    return proc


def _stopping(state_dir: Path) -> bool:
    # A board removed under us (fleet lab down --rm) is stopped too.
    return (state_dir / "stop").exists() or not (state_dir / "board.json").exists()


def run_board(state_dir: Path, boot_delay: float) -> None:
    console = os.open(state_dir / "console.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        while not _stopping(state_dir):
            (state_dir / "halted").unlink(missing_ok=True)
            if (state_dir / "power-off").exists():
                time.sleep(0.1)
                continue
            proc = _boot_once(state_dir, console)
            proc.wait()
            os.write(console, b"fleet: sim board restarts\n")
            time.sleep(boot_delay)
    finally:
        os.close(console)
        with contextlib.suppress(OSError):
            (state_dir / "board.pid").unlink(missing_ok=True)
            # fleet lab down waits for this before it frees the board's loops and mount.
            (state_dir / "halted").write_text("")


def main(argv: list[str]) -> int:
    """``python -m fleet.lab.simboot BOOT_DELAY STATE_DIR...``"""
    boot_delay = float(argv[0])
    # The boards' programs (mount, unshare, chroot) from the system, not from whatever
    # PATH the caller had (a virtualenv's or a version manager's shims).
    os.environ["PATH"] = "/usr/sbin:/usr/bin:/sbin:/bin"
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    threads = [
        threading.Thread(target=run_board, args=(Path(d), boot_delay), name=Path(d).name)
        for d in argv[1:]
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
