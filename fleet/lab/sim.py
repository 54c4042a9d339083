"""Simulated boards (docs/lab.md, "Simulated boards"): a real SSH server (dropbear) on a
loopback port of its own, running the board's own agent, forced command and health
watcher in a chroot tree, with slot partitions as loop devices over files, partition 1 as
a tmpfs, and a reboot that ends the board's PID namespace and boots it again through the
boot script's rules (fleet.lab.simboot). Hundreds fit on one machine; they exist to test
and measure what drives many boards (rollouts), not the image itself.

    with sim.running(3, Path("keys/release.pub")) as boards:   # sim-1..3, all answering
        sim.set_fault(boards[1], "hang")
        ...                                                    # fleet update sim-2 ...
"""

from __future__ import annotations

import base64
import concurrent.futures as cf
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from fleet import bootstate
from fleet.boards import get_profile
from fleet.errors import LabError, ProgramError, UsageError
from fleet.lab import simboot, simtree
from fleet.lab.keys import ensure_client_key
from fleet.lab.ports import free_loopback_port
from fleet.lab.state import Board, check_name, lab_root, load, save
from fleet.provision.values import PullSettings
from fleet.release import load_manifest, manifest_sha256
from fleet.run import run

PARTS = (2, 3, 5, 6)
PART_MIB = 64
FIRMWARE_MIB = 4
FAULTS = ("none", "unhealthy", "hang")
UP_TIMEOUT = 60.0
# Partition 1's files while the board is down (its tmpfs is gone then): power on puts
# them back, so the boot state outlives a down.
SAVED_FIRMWARE = "firmware.saved"


def _payload_part(slot: str, name: str) -> int:
    return {("A", "boot"): 2, ("A", "rootfs"): 5, ("B", "boot"): 3, ("B", "rootfs"): 6}[
        (slot, name)
    ]


def _pubkeys(trust: Path) -> list[Path]:
    keys = sorted(trust.glob("*.pub")) if trust.is_dir() else [trust]
    if not keys or not all(k.is_file() for k in keys):
        raise UsageError(f"--trust {trust}: give a release .pub key or a folder of them")
    return keys


def _attach(
    board: Board, release: Path | None = None, files: dict[str, bytes] | None = None
) -> None:
    """The board's partitions: a loop device over each slot's file, as the tree's
    /dev/vdaN, and partition 1's tmpfs (with what it held at the last down, or RELEASE's
    boot state on a new board)."""
    state_dir = board.state_dir
    tree = state_dir / "tree"
    loops: list[str] = []
    try:
        for number in PARTS:
            backing = state_dir / "parts" / f"p{number}.img"
            loops.append(simtree.attach_loop(backing, tree / f"dev/vda{number}"))
            # Written as each one is made: a failure half way frees what was made.
            (state_dir / "loops").write_text("\n".join(loops) + "\n")
        firmware = tree / "boot/firmware"
        simtree.mount_firmware(firmware, FIRMWARE_MIB, read_only=False)
        saved = state_dir / SAVED_FIRMWARE
        if saved.is_dir():
            shutil.copytree(saved, firmware, dirs_exist_ok=True)
            shutil.rmtree(saved)
        if release is not None:
            _flash_release(state_dir, release)
        for rel, data in (files or {}).items():  # provisioning's files (fleet/pull)
            (firmware / rel).parent.mkdir(parents=True, exist_ok=True)
            (firmware / rel).write_bytes(data)
        run(["mount", "-o", "remount,ro", str(firmware)])
    except BaseException:
        _release_resources(board)
        raise


def _make_board(
    root: Path,
    name: str,
    profile: str,
    pubkeys: list[Path],
    release: Path | None,
    authorized: str,
    settings: simboot.Settings,
    avoid: set[int],
    pull: PullSettings | None = None,
    pull_keys: tuple[Path, ...] = (),
) -> Board:
    state_dir = root / name
    if state_dir.exists():
        raise LabError(f"lab board {name!r} exists; fleet lab down {name} --rm first")
    state_dir.mkdir(parents=True)
    port = free_loopback_port(avoid)
    avoid.add(port)
    tree = state_dir / "tree"
    simtree.board_tree(
        root / ".sim-template",
        tree,
        board=profile,
        hostname=name,
        port=port,
        pubkeys=pubkeys,
        authorized=authorized,
    )
    for key in pull_keys:  # what an image's [pull] timestamp_keys pins
        (tree / "etc/fleet/pull-keys").mkdir(exist_ok=True)
        shutil.copyfile(key, tree / "etc/fleet/pull-keys" / key.name)
    (state_dir / "parts").mkdir()
    for number in PARTS:
        with (state_dir / "parts" / f"p{number}.img").open("wb") as handle:
            handle.truncate(PART_MIB << 20)
    simboot.save_settings(state_dir, settings)
    board = Board(
        name=name,
        profile=profile,
        disk=tree,
        in_place=False,
        ssh_port=port,
        app_port=0,
        app_guest_port=0,
        qemu_argv=(),
        extracts=(),
        up_line="fleet: system up",
        wait_ssh=True,
        pid=None,
        root=root,
        kind="sim",
    )
    save(board)  # from here on, a failed up finds what to free through it
    _attach(board, release, {"fleet/pull": pull.render().encode()} if pull else None)
    # The board's identity is made here rather than at its first boot, so it is pinned
    # before anyone connects: no trust on first use, as the lab does for QEMU boards.
    key = tree / "data/ssh/dropbear_ed25519_host_key"
    made = run(["dropbearkey", "-t", "ed25519", "-f", str(key)]).stdout.decode()
    line = next((x for x in made.splitlines() if x.startswith("ssh-ed25519 ")), "")
    if not line:
        raise ProgramError(f"dropbearkey printed no public key for {name}")
    key.with_name(key.name + ".pub").write_text(" ".join(line.split()[:2]) + "\n")
    _pin(root, port, line)
    return board


def _flash_release(state_dir: Path, release: Path) -> None:
    """Slot A holds RELEASE and the boot state records it, as a flashed disk's does."""
    manifest = load_manifest(release)
    for payload in manifest.payloads:
        part = state_dir / "parts" / f"p{_payload_part('A', payload.name)}.img"
        with (release / payload.file).open("rb") as src, part.open("r+b") as dst:
            shutil.copyfileobj(src, dst)
    sha = manifest_sha256(release)
    state = bootstate.BootState(
        seq=1, floor=manifest.release, slot_a=f"{manifest.release}:{manifest.version}:{sha}"
    )
    firmware = state_dir / "tree/boot/firmware"
    (firmware / "fleet").mkdir(exist_ok=True)
    (firmware / bootstate.COPIES[0]).write_bytes(bootstate.encode(state))


def _pin(root: Path, port: int, line: str) -> None:
    import paramiko

    from fleet import ssh

    kind, blob = line.split()[:2]
    key = paramiko.PKey.from_type_string(kind, base64.b64decode(blob))
    ssh.pin_host_key(root / "known_hosts", "127.0.0.1", port, key)


def _supervise(boards: list[Board]) -> None:
    """One supervisor for these boards (fleet.lab.simboot): a detached process of its own
    per `up`, so boards of different `up` calls never wait on each other's process and no
    long-lived daemon has to be found, started or told about new boards."""
    root = boards[0].root
    with (root / "simboot.log").open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fleet.lab.simboot", *(str(b.state_dir) for b in boards)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    for board in boards:
        (board.state_dir / "supervisor.pid").write_text(f"{proc.pid}\n")


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
            sock.settimeout(1.0)
            return sock.recv(4) == b"SSH-"
    except OSError:
        return False


def wait_up(boards: list[Board], timeout: float = UP_TIMEOUT) -> None:
    """Until every board's SSH server sends its banner."""
    deadline = time.monotonic() + timeout
    waiting = list(boards)
    while waiting:
        waiting = [b for b in waiting if not _answers(b.ssh_port)]
        if not waiting:
            return
        if time.monotonic() > deadline:
            names = ", ".join(b.name for b in waiting[:5])
            raise LabError(f"simulated board(s) {names} did not answer SSH within {timeout:.0f} s")
        time.sleep(0.1)


def up(
    count: int,
    trust: Path,
    *,
    prefix: str = "sim",
    profile: str = "qemu-virt-arm64",
    release: Path | None = None,
    boot_delay: float = 0.3,
    health_timeout: int = 10,
    timeout: float = UP_TIMEOUT,
    pull: PullSettings | None = None,
    pull_keys: tuple[Path, ...] = (),
    names: Sequence[str] = (),
) -> list[Board]:
    """Make and boot COUNT simulated boards PREFIX-1..COUNT that trust the release keys
    TRUST (a .pub or a folder of them), slot A holding RELEASE (default: a factory
    release 1, version 0.0.0-sim, with no payloads); return once all answer SSH. With
    PULL they poll a store (docs/pull.md), pinning the timestamp keys PULL_KEYS. NAMES, when
    given, names the boards instead (a lab file's boards: fleet.hil)."""
    if os.geteuid() != 0:
        raise UsageError("simulated boards need root (loop devices, chroot, namespaces)")
    if count < 1:
        raise UsageError("--count must be at least 1")
    if health_timeout < 1:
        raise UsageError("--health-timeout must be at least 1 s")
    if get_profile(profile).boot_method != "uboot-ab":
        raise UsageError(
            f"{profile} boots by the Pi firmware's tryboot; simulated boards follow the "
            "uboot-ab boot script only"
        )
    if not names:
        names = [f"{prefix}-{n}" for n in range(1, count + 1)]
    names = [check_name(n) for n in names]
    pubkeys = _pubkeys(trust)
    if release is not None:
        load_manifest(release)
    root = lab_root()
    taken = [n for n in names if (root / n).exists()]
    if taken:
        raise LabError(f"lab board {taken[0]!r} exists; fleet lab down {taken[0]} --rm first")
    root.mkdir(parents=True, exist_ok=True)
    simtree.build_template(root / ".sim-template")
    authorized = ensure_client_key(root / "id_ed25519")
    settings = simboot.Settings(boot_delay, health_timeout)
    avoid: set[int] = set()
    made: list[Board] = []
    try:
        # Two at a time (this machine's cores): most of a board's making is losetup,
        # cp and dropbearkey processes.
        with cf.ThreadPoolExecutor(2) as pool:
            futures = [
                pool.submit(
                    _make_board,
                    root,
                    n,
                    profile,
                    pubkeys,
                    release,
                    authorized,
                    settings,
                    avoid,
                    pull,
                    pull_keys,
                )
                for n in names
            ]
            for future in futures:
                made.append(future.result())
    except BaseException:
        for name in names:
            with contextlib.suppress(Exception):
                board = load(name, root)
                _release_resources(board)
            with contextlib.suppress(Exception):
                _forget_key(root / name)
            shutil.rmtree(root / name, ignore_errors=True)
        raise
    _supervise(made)
    wait_up(made, timeout)
    return [load(b.name, root) for b in made]


def _forget_key(state_dir: Path) -> None:
    from fleet import ssh

    board = load(state_dir.name, state_dir.parent)
    ssh.forget_host(board.known_hosts_path, "127.0.0.1", board.ssh_port)


@contextlib.contextmanager
def running(count: int, trust: Path, **options: Any) -> Iterator[list[Board]]:
    """``up(count, trust, **options)``; at the end every one of them down and removed."""
    boards = up(count, trust, **options)
    try:
        yield boards
    finally:
        down_many(boards, remove=True)


def _kill(board: Board) -> None:
    pid = board.running_pid()
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


def _supervised(board: Board) -> bool:
    """Whether a supervisor runs this board's loop (its process may outlive the loop of
    a board that was taken down, serving the others of its `up`)."""
    if (board.state_dir / "halted").exists():
        return False
    try:
        pid = int((board.state_dir / "supervisor.pid").read_text())
        return b"fleet.lab.simboot" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return False


def _wait_off(board: Board, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while board.running_pid() is not None:
        if time.monotonic() > deadline:
            raise LabError(f"simulated board {board.name} did not stop")
        _kill(board)
        time.sleep(0.02)


def power(board: Board, action: str, wait: bool = True, timeout: float = UP_TIMEOUT) -> None:
    """off: a power cut, the board stays off; on: boot it (a board that is down gets its
    partitions back first); cycle: both."""
    before = board.running_pid()
    if action in ("off", "cycle"):
        if action == "off":
            (board.state_dir / "power-off").write_text("")
        _kill(board)
        if action == "off":
            _wait_off(board)
            return
    if not (board.state_dir / "loops").exists():
        _attach(board)
    (board.state_dir / "power-off").unlink(missing_ok=True)
    (board.state_dir / "stop").unlink(missing_ok=True)
    if not _supervised(board):
        # Not halted from here on: a down that comes before the new loop's first turn
        # waits for that loop to see its stop.
        (board.state_dir / "halted").unlink(missing_ok=True)
        _supervise([board])
    if not wait:
        return
    deadline = time.monotonic() + timeout
    if action == "cycle":
        # Up again means: a new boot of it runs and answers, not the old one's last words.
        while board.running_pid() in (None, before):
            if time.monotonic() > deadline:
                raise LabError(f"simulated board {board.name} did not boot again")
            time.sleep(0.05)
    wait_up([board], max(1.0, deadline - time.monotonic()))


def set_fault(board: Board, fault: str) -> None:
    """From the board's next boot on, its app's health check fails (unhealthy), never
    answers (hang), or follows the booted rootfs again (none)."""
    if fault not in FAULTS:
        raise UsageError(f"fault must be one of {', '.join(FAULTS)}, got {fault!r}")
    path = board.state_dir / "fault"
    if fault == "none":
        path.unlink(missing_ok=True)
    else:
        path.write_text(fault + "\n")


def _release_resources(board: Board) -> None:
    firmware = board.state_dir / "tree/boot/firmware"
    if os.path.ismount(firmware):
        saved = board.state_dir / SAVED_FIRMWARE
        shutil.rmtree(saved, ignore_errors=True)
        with contextlib.suppress(OSError):
            shutil.copytree(firmware, saved)
    loops = board.state_dir / "loops"
    try:
        attached = loops.read_text().split()
    except OSError:
        attached = []
    simtree.release(attached, firmware)
    loops.unlink(missing_ok=True)


def down_many(boards: list[Board], remove: bool = False) -> list[bool]:
    """Stop the boards and free their loop devices and mounts (all at once: each stop is
    a wait for its supervisor); with REMOVE also their state. Returns which ones ran."""
    was = [b.running_pid() is not None for b in boards]
    for board in boards:
        (board.state_dir / "stop").write_text("")
        _kill(board)
    deadline = time.monotonic() + 10
    # The supervisor's loop for a board ends (halted) before its loops and partition 1
    # go: it must not boot the board again from under them.
    waiting = list(boards)
    while waiting:
        waiting = [b for b in waiting if _supervised(b)]
        if waiting and time.monotonic() > deadline:
            raise LabError(f"the supervisor of {waiting[0].name} did not stop it")
        for board in waiting:
            _kill(board)
        if waiting:
            time.sleep(0.05)
    for board in boards:
        _release_resources(board)
        if remove:
            with contextlib.suppress(Exception):
                _forget_key(board.state_dir)
            shutil.rmtree(board.state_dir, ignore_errors=True)
    return was


def down(board: Board) -> bool:
    """Stop the board and free its loop devices and mount; returns whether it ran."""
    return down_many([board])[0]
