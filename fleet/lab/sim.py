"""Simulated boards (docs/lab.md, "Simulated boards"): a real SSH server (dropbear) on a
loopback port of its own, running the board's own agent, forced command and health
watcher in a chroot tree, with slot partitions as loop devices over files, partition 1 as
a tmpfs, and a reboot that ends the board's PID namespace and boots it again through the
boot script's rules (fleet.lab.simboot). Hundreds fit on one machine; they exist to test
and measure what drives many boards (rollouts), not the image itself.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import hashlib
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

from fleet import bootstate
from fleet.boards import get_profile
from fleet.errors import LabError, ProgramError, UsageError
from fleet.lab import simtree
from fleet.lab.keys import ensure_client_key
from fleet.lab.ports import free_loopback_port
from fleet.lab.state import Board, check_name, lab_root, load, save
from fleet.release import load_manifest, read_manifest_bytes
from fleet.run import run

PARTS = (2, 3, 5, 6)
PART_MIB = 64
FIRMWARE_MIB = 4
FAULTS = ("none", "unhealthy", "hang")
UP_TIMEOUT = 60.0


def _payload_part(slot: str, name: str) -> int:
    return {("A", "boot"): 2, ("A", "rootfs"): 5, ("B", "boot"): 3, ("B", "rootfs"): 6}[
        (slot, name)
    ]


def _pubkeys(trust: Path) -> list[Path]:
    keys = sorted(trust.glob("*.pub")) if trust.is_dir() else [trust]
    if not keys or not all(k.is_file() for k in keys):
        raise UsageError(f"--trust {trust}: give a release .pub key or a folder of them")
    return keys


def _make_board(
    root: Path,
    name: str,
    profile: str,
    pubkeys: list[Path],
    release: Path | None,
    authorized: str,
    avoid: set[int],
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
    loops: list[str] = []
    (state_dir / "parts").mkdir()
    for number in PARTS:
        backing = state_dir / "parts" / f"p{number}.img"
        with backing.open("wb") as handle:
            handle.truncate(PART_MIB << 20)
        loop = run(["losetup", "--find", "--show", str(backing)]).stdout.decode().strip()
        loops.append(loop)
        (state_dir / "loops").write_text("\n".join(loops) + "\n")
        os.mknod(tree / f"dev/vda{number}", stat.S_IFBLK | 0o600, os.stat(loop).st_rdev)
    firmware = tree / "boot/firmware"
    run(["mount", "-t", "tmpfs", "-o", f"size={FIRMWARE_MIB}m,mode=0755", "tmpfs", str(firmware)])
    if release is not None:
        _flash_release(state_dir, release)
    run(["mount", "-o", "remount,ro", str(firmware)])
    key = state_dir / "tree/data/ssh/dropbear_ed25519_host_key"
    made = run(["dropbearkey", "-t", "ed25519", "-f", str(key)]).stdout.decode()
    line = next((x for x in made.splitlines() if x.startswith("ssh-ed25519 ")), "")
    if not line:
        raise ProgramError(f"dropbearkey printed no public key for {name}")
    _pin(root, port, line)
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
    save(board)
    return board


def _flash_release(state_dir: Path, release: Path) -> None:
    """Slot A holds RELEASE and the boot state records it, as a flashed disk's does."""
    manifest = load_manifest(release)
    for payload in manifest.payloads:
        part = state_dir / "parts" / f"p{_payload_part('A', payload.name)}.img"
        with (release / payload.file).open("rb") as src, part.open("r+b") as dst:
            shutil.copyfileobj(src, dst)
    sha = hashlib.sha256(read_manifest_bytes(release)).hexdigest()
    state = bootstate.BootState(
        seq=1, floor=manifest.release, slot_a=f"{manifest.release}:{manifest.version}:{sha}"
    )
    firmware = state_dir / "tree/boot/firmware"
    (firmware / "fleet").mkdir(exist_ok=True)
    (firmware / bootstate.COPIES[0]).write_bytes(bootstate.encode(state))


def _pin(root: Path, port: int, line: str) -> None:
    import base64

    import paramiko

    from fleet import ssh

    kind, blob = line.split()[:2]
    key = paramiko.PKey.from_type_string(kind, base64.b64decode(blob))
    ssh.pin_host_key(root / "known_hosts", "127.0.0.1", port, key)


def _supervise(boards: list[Board], boot_delay: float) -> None:
    root = boards[0].root
    log = (root / "simboot.log").open("ab")
    with log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fleet.lab.simboot",
                str(boot_delay),
                *(str(b.state_dir) for b in boards),
            ],
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
    timeout: float = UP_TIMEOUT,
) -> list[Board]:
    """Make and boot COUNT simulated boards PREFIX-1..COUNT; return once all answer SSH."""
    if os.geteuid() != 0:
        raise UsageError("simulated boards need root (loop devices, chroot, namespaces)")
    if count < 1:
        raise UsageError("--count must be at least 1")
    get_profile(profile)
    names = [check_name(f"{prefix}-{n}") for n in range(1, count + 1)]
    pubkeys = _pubkeys(trust)
    if release is not None:
        load_manifest(release)
    root = lab_root()
    root.mkdir(parents=True, exist_ok=True)
    simtree.build_template(root / ".sim-template")
    authorized = ensure_client_key(root / "id_ed25519")
    avoid: set[int] = set()
    made: list[Board] = []
    try:
        # Two at a time: most of a board's making is losetup and dropbearkey processes.
        with cf.ThreadPoolExecutor(2) as pool:
            futures = [
                pool.submit(_make_board, root, n, profile, pubkeys, release, authorized, avoid)
                for n in names
            ]
            for future in futures:
                made.append(future.result())
    except BaseException:
        for board in made:
            with contextlib.suppress(Exception):
                _release_resources(board)
                shutil.rmtree(board.state_dir, ignore_errors=True)
        raise
    _supervise(made, boot_delay)
    wait_up(made, timeout)
    return [load(b.name, root) for b in made]


def _kill(board: Board) -> None:
    pid = board.running_pid()
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


def _supervisor_alive(board: Board) -> bool:
    try:
        pid = int((board.state_dir / "supervisor.pid").read_text())
        return b"fleet.lab.simboot" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return False


def power(board: Board, action: str, wait: bool = True) -> None:
    """off: a power cut, the board stays off; on: boot it; cycle: both."""
    if action in ("off", "cycle"):
        if action == "off":
            (board.state_dir / "power-off").write_text("")
        _kill(board)
        if action == "off":
            return
    if not (board.state_dir / "loops").exists():
        raise LabError(f"simulated board {board.name} is down; make boards anew with lab up --sim")
    (board.state_dir / "power-off").unlink(missing_ok=True)
    (board.state_dir / "stop").unlink(missing_ok=True)
    if not _supervisor_alive(board):
        _supervise([board], 0.3)
    if wait:
        time.sleep(0.2)  # a cycle: the old server must be gone before we look
        wait_up([board])


def set_fault(board: Board, fault: str) -> None:
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
        run(["umount", str(firmware)], check=False)
    loops = board.state_dir / "loops"
    with contextlib.suppress(OSError):
        for loop in loops.read_text().split():
            run(["losetup", "-d", loop], check=False)
        loops.unlink()


def down(board: Board) -> bool:
    """Stop the board and free its loop devices and mount; returns whether it ran."""
    was = board.running_pid() is not None
    (board.state_dir / "stop").write_text("")
    _kill(board)
    deadline = time.monotonic() + 10
    # The supervisor's loop for this board ends (halted) before its loops and partition 1
    # go: it must not boot the board again from under them.
    while _supervisor_alive(board) and not (board.state_dir / "halted").exists():
        if time.monotonic() > deadline:
            raise LabError(f"the supervisor of {board.name} did not stop it")
        _kill(board)
        time.sleep(0.05)
    _release_resources(board)
    return was
