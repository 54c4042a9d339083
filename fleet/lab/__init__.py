"""The virtual lab: boards the tool runs itself, on QEMU, from a disk image.

``up`` flashes (copies) a disk image for a named board, provisions it (hostname, the
lab's SSH key), boots it and waits until it is up; ``power`` cuts and restores power;
``down`` stops it. Every board's state lives in its folder under the lab root (see
``fleet.lab.state``), so boards outlive the process that started them.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from fleet import provision
from fleet.boards import BoardProfile, get_profile
from fleet.errors import FleetError, LabError, UsageError
from fleet.lab import bootchart, disk, hostkey, qemu, stamps
from fleet.lab.keys import ensure_client_key
from fleet.lab.ports import free_loopback_port
from fleet.lab.state import Board, all_boards, check_name, lab_root, load, save
from fleet.lab.wait import Note, log_size, wait_up

# fleet.ssh (and with it paramiko, about 0.4 s to import) is imported where it is used,
# not here: `fleet lab up` would otherwise spend that before QEMU even starts.
if TYPE_CHECKING:
    import paramiko

    from fleet import ssh


def _prefetch_ssh() -> None:
    """Import paramiko in the background while the board boots, which takes seconds; the
    host key pin at the end then finds it loaded."""
    threading.Thread(
        target=importlib.import_module, args=("fleet.ssh",), name="import-paramiko", daemon=True
    ).start()


__all__ = [
    "UP_LINE",
    "Board",
    "boot_chart",
    "console_mark",
    "down",
    "down_all",
    "get",
    "inventory",
    "list_boards",
    "power",
    "session",
    "up",
    "wait_until_up",
]

UP_LINE = "fleet: system up"
DEFAULT_APP_PORT = 8080
POWER_ACTIONS = ("off", "on", "cycle")


def _quiet(_: str) -> None:
    pass


def get(name: str) -> Board:
    return load(name)


def console_mark(board: Board) -> int:
    """Where the console log ends now: pass it to ``wait_until_up`` to wait for a boot that
    starts after this moment (e.g. a reboot the board does itself after an update)."""
    return log_size(board.console_log)


def wait_until_up(board: Board, since: int, timeout: float = 120.0, note: Note = _quiet) -> float:
    """Wait for the board's up condition in console output after ``since``; return the
    seconds waited. Raises LabError like ``up`` does."""
    return wait_up(board, since, timeout, note)


def session(board: Board, timeout: float = 10.0) -> ssh.Session:
    """A root shell session on the board with the lab's shell key (a development image
    lets it in; a production one does not); its host key must be the one pinned when
    the board first came up."""
    from fleet import ssh

    return ssh.Session.connect(
        "127.0.0.1",
        board.ssh_port,
        "root",
        board.shell_key_path,
        board.known_hosts_path,
        trust_new=False,
        timeout=timeout,
    )


def list_boards() -> list[Board]:
    return all_boards()


def up(
    board: str,
    disk_image: Path,
    name: str | None = None,
    *,
    in_place: bool = False,
    timeout: float = 120.0,
    app_port: int = DEFAULT_APP_PORT,
    up_line: str = UP_LINE,
    wait_ssh: bool = True,
    down_on_failure: bool = False,
    note: Note = _quiet,
    status: Note | None = None,
    settings: provision.Settings | None = None,
    storage_faults: Path | None = None,
) -> Board:
    """Flash ``disk_image`` onto a new virtual board of profile ``board`` and boot it.
    ``storage_faults`` is a QEMU blkdebug config: the board's disk fails as it says.

    Returns once the console shows ``up_line`` and (with ``wait_ssh``) SSH answers;
    then the board's SSH host key is pinned in the lab's known_hosts.
    """
    profile = get_profile(board)
    if profile.qemu is None:
        raise UsageError(f"board {board} is not virtual (its profile has no [qemu] table)")
    name = check_name(name or board)
    source = disk_image.absolute()
    if not source.exists():
        raise UsageError(f"disk image {disk_image} not found")
    root = lab_root()
    state_dir = root / name
    if (state_dir / "board.json").exists():
        old = load(name, root)
        if old.running_pid() is not None:
            raise LabError(
                f"lab board {name!r} is running (pid {old.running_pid()}); "
                f"stop it first: fleet lab down {name}"
            )
        from fleet import ssh

        ssh.forget_host(old.known_hosts_path, "127.0.0.1", old.ssh_port)
    if profile.qemu.disk == "sd":
        disk.require_power_of_two(source, profile.qemu.machine)
    faults = None
    if storage_faults is not None:
        try:
            faults = storage_faults.read_bytes()
        except OSError as exc:
            raise UsageError(
                f"cannot read storage faults {storage_faults}: {exc.strerror}"
            ) from exc
        if b"[inject-error]" not in faults and b"[set-state]" not in faults:
            raise UsageError(f"{storage_faults}: not a blkdebug config (no [inject-error])")
    fresh = not state_dir.exists()
    state_dir.mkdir(parents=True, exist_ok=True)
    try:
        record = _flash(
            profile, name, source, state_dir, root, in_place, app_port, note, settings, faults
        )
    except BaseException:
        if fresh:
            # Nothing half-made stays behind for a board that never existed.
            shutil.rmtree(state_dir, ignore_errors=True)
        raise
    record = replace(record, up_line=up_line, wait_ssh=wait_ssh)
    save(record)
    return _boot(record, timeout, down_on_failure, note, status)


def _flash(
    profile: BoardProfile,
    name: str,
    source: Path,
    state_dir: Path,
    root: Path,
    in_place: bool,
    app_port: int,
    note: Note,
    settings: provision.Settings | None = None,
    faults: bytes | None = None,
) -> Board:
    """Copy and provision the disk; return the board record (not yet saved)."""
    assert profile.qemu is not None
    public_key = ensure_client_key(root / "id_ed25519")
    shell_key = ensure_client_key(root / "shell_ed25519", "fleet-lab-shell")

    if in_place:
        target = source
    else:
        target = state_dir / "disk.img"
        note(f"{name}: copying {source} to {target}")
        disk.copy_sparse(source, target)
    # The lab's own keys are always allowed in, so the lab can reach what it boots: the
    # agent's key (updates, status) and the shell key (fleet lab ssh, development images).
    allowed = provision.with_defaults(settings, name, [public_key.strip()])
    provision.write(target, replace(allowed, shell_keys=(shell_key.strip(),)))

    ssh_port = free_loopback_port()
    http_port = free_loopback_port({ssh_port})
    faults_path = None
    if faults is not None:
        faults_path = state_dir / "storage-faults.cfg"
        faults_path.write_bytes(faults)
    loader_args, extracts = qemu.loader_files(profile, state_dir)
    dtbs = [Path(e.dest) for e in extracts if e.dest.endswith(".dtb")]
    argv = qemu.build_argv(
        profile,
        state_dir,
        target,
        ssh_port,
        http_port,
        app_port,
        loader_args,
        dtbs[0] if dtbs else None,
        faults_path,
    )
    record = Board(
        name=name,
        profile=profile.name,
        disk=target,
        in_place=in_place,
        ssh_port=ssh_port,
        app_port=http_port,
        app_guest_port=app_port,
        qemu_argv=tuple(argv),
        extracts=extracts,
        up_line=UP_LINE,
        wait_ssh=True,
        pid=None,
        root=root,
    )
    record.console_log.unlink(missing_ok=True)
    _stamped(record).unlink(missing_ok=True)
    if record.known_hosts_path.exists():
        from fleet import ssh

        ssh.forget_host(record.known_hosts_path, "127.0.0.1", ssh_port)
    return record


def _launch(board: Board, note: Note, bootdelay: int = 0) -> tuple[Board, int]:
    """Start QEMU for ``board``; return the board with its pid and the console log offset
    from which this boot's output starts. ``bootdelay``: U-Boot's autoboot delay for this
    power-on (0: none; a key pressed in time still stops it)."""
    argv = list(board.qemu_argv)
    profile = get_profile(board.profile)
    bios = qemu.flash_env_bios(profile, argv)
    if bios is not None:
        qemu.write_flash_env(profile, board.state_dir, bios, bootdelay)
    # At every power-on: an in-place disk (a real card) loses them again at `down`.
    if profile.qemu is not None and profile.qemu.kernel_args:
        disk.set_kernel_args(board.disk, profile.qemu.kernel_args)
    for item in board.extracts:
        found = disk.extract(board.disk, item.member, Path(item.dest))
        if not found and item.required:
            raise LabError(f"{item.member} not found on the first partition of {board.disk}")
        if not found and "-dtb" in argv:
            # The Pi's U-Boot then uses the device tree built into it.
            at = argv.index("-dtb")
            del argv[at : at + 2]
            note(f"{board.name}: {item.member} not on the disk; booting without -dtb")
    offset = log_size(board.console_log)
    _stop_stamper(board)
    stamps.mark_power_on(_stamped(board), time.time())
    pid = qemu.start(replace(board, qemu_argv=tuple(argv)))
    _start_stamper(board, offset, pid)
    board = board.with_pid(pid)
    save(board)
    note(
        f"{board.name}: QEMU running (pid {pid}); ssh 127.0.0.1:{board.ssh_port}, "
        f"app 127.0.0.1:{board.app_port}"
    )
    return board, offset


def _stamped(board: Board) -> Path:
    return board.state_dir / "console.stamped"


def _stamper_pidfile(board: Board) -> Path:
    return board.state_dir / "stamps.pid"


def _stop_stamper(board: Board) -> None:
    """End the follower of an earlier QEMU of this board (it ends by itself once that
    QEMU is gone; this makes sure it never stamps the next one's lines too)."""
    try:
        pid = int(_stamper_pidfile(board).read_text())
    except (OSError, ValueError):
        return
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            if b"fleet.lab.stamps" not in handle.read():
                return
        os.kill(pid, signal.SIGTERM)
    except OSError:
        pass
    _stamper_pidfile(board).unlink(missing_ok=True)


def _start_stamper(board: Board, offset: int, qemu_pid: int) -> None:
    follower = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fleet.lab.stamps",
            str(board.console_log),
            str(_stamped(board)),
            str(offset),
            str(qemu_pid),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        cwd=Path(__file__).resolve().parent.parent.parent,
    )
    _stamper_pidfile(board).write_text(f"{follower.pid}\n")


def boot_chart(board: Board) -> bootchart.Chart:
    """The chart of the board's last boot, from its host-stamped console."""
    try:
        text = _stamped(board).read_text(errors="replace")
    except FileNotFoundError:
        raise LabError(
            f"board {board.name} has no stamped console log ({_stamped(board)}): "
            "boot it with this version of fleet"
        ) from None
    return bootchart.chart(bootchart.parse_stamped(text))


def _boot(
    board: Board,
    timeout: float,
    down_on_failure: bool,
    note: Note,
    status: Note | None,
    bootdelay: int = 0,
) -> Board:
    board, offset = _launch(board, note, bootdelay)
    if board.wait_ssh:
        _prefetch_ssh()
    try:
        took = wait_up(board, offset, timeout, note, status)
    except LabError:
        if down_on_failure:
            qemu.stop(board, hard=True)
            save(board.with_pid(None))
        raise
    if board.wait_ssh:
        _pin_host_key(board, offset)
    note(f"{board.name}: up after {took:.1f} s")
    return board


def _pin_host_key(board: Board, offset: int) -> None:
    """Pin the key the board announced on its console in this boot (a board that
    announces none: the one its SSH server presents)."""
    import paramiko

    from fleet import ssh

    console = hostkey.from_console_log(board.console_log, offset)
    if console is not None:
        key = paramiko.PKey.from_type_string(*console)
    else:
        key = ssh.fetch_host_key("127.0.0.1", board.ssh_port)
    pinned = ssh.pinned_keys(board.known_hosts_path, "127.0.0.1", board.ssh_port)
    if pinned and not any(_same(key, k) for k in pinned):
        # Its identity lives on the data partition and must survive reboots and updates.
        raise LabError(
            f"board {board.name} came back with a different SSH host key "
            f"({ssh.fingerprint(key)}, pinned {ssh.fingerprint(pinned[0])})"
        )
    if not pinned:
        ssh.pin_host_key(board.known_hosts_path, "127.0.0.1", board.ssh_port, key)


def _same(a: paramiko.PKey, b: paramiko.PKey) -> bool:
    return a.get_name() == b.get_name() and a.asbytes() == b.asbytes()


def down(name: str, remove: bool = False) -> bool:
    """Stop the board (QEMU flushes its disk); with ``remove`` delete its state folder.
    Returns whether it was running."""
    board = load(name)
    if board.kind == "sim":
        from fleet.lab import sim

        was_running = sim.down(board)
        if remove:
            _forget(board)
        return was_running
    was_running = qemu.stop(board, hard=False)
    save(board.with_pid(None))
    profile = get_profile(board.profile)
    if board.in_place and profile.qemu is not None and profile.qemu.kernel_args:
        # The emulator's kernel arguments stay off a card that may go into a real board
        # (best effort: the disk may be gone, e.g. a loop device already detached).
        with contextlib.suppress(FleetError):
            disk.set_kernel_args(board.disk, ())
    if remove:
        _forget(board)
    return was_running


def down_all(remove: bool = False) -> list[tuple[str, bool]]:
    """``down`` for every board of the lab (simulated ones together); returns each name
    and whether it was running."""
    boards = list_boards()
    sims = [b for b in boards if b.kind == "sim"]
    done: dict[str, bool] = {}
    if sims:
        from fleet.lab import sim

        for board, was in zip(sims, sim.down_many(sims), strict=True):
            done[board.name] = was
            if remove:
                _forget(board)
    for board in boards:
        if board.kind != "sim":
            done[board.name] = down(board.name, remove)
    return [(b.name, done[b.name]) for b in boards]


def _toml_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def inventory(groups: Sequence[str] = (), prefix: str | None = None) -> str:
    """An inventory in fleet's TOML form (docs/inventory.md) of every running lab board,
    simulated or QEMU (only PREFIX-N ones with PREFIX): each in GROUPS, by default in the
    group of its kind ("sim" or "qemu")."""
    chunks = [f"# fleet lab inventory: the running boards of {lab_root()}\n"]
    for board in list_boards():
        if board.running_pid() is None:
            continue
        if prefix is not None and not board.name.startswith(prefix + "-"):
            continue
        chunks.append(
            "\n[[boards]]\n"
            f"name = {_toml_string(board.name)}\n"
            'address = "127.0.0.1"\n'
            f"port = {board.ssh_port}\n"
            'user = "root"\n'
            f"key = {_toml_string(str(board.key_path))}\n"
            f"known_hosts = {_toml_string(str(board.known_hosts_path))}\n"
            f"profile = {_toml_string(board.profile)}\n"
            f"groups = [{', '.join(_toml_string(g) for g in groups or [board.kind])}]\n"
        )
    return "".join(chunks)


def _forget(board: Board) -> None:
    from fleet import ssh

    ssh.forget_host(board.known_hosts_path, "127.0.0.1", board.ssh_port)
    shutil.rmtree(board.state_dir)


def power(
    name: str,
    action: str,
    *,
    wait: bool = True,
    timeout: float = 120.0,
    note: Note = _quiet,
    status: Note | None = None,
    bootdelay: int = 0,
) -> Board:
    """``off``: kill QEMU at once (a power cut, no flush of guest state); ``on``: start it
    again on the same disk and ports; ``cycle``: both. ``on``/``cycle`` wait for the board
    to be up unless ``wait`` is False. ``bootdelay`` seconds of U-Boot autoboot delay
    give a person on the console time to stop it (boards whose U-Boot environment the
    lab keeps: qemu-virt-arm64)."""
    if action not in POWER_ACTIONS:
        raise UsageError(f"power action must be one of {', '.join(POWER_ACTIONS)}, got {action!r}")
    board = load(name)
    if board.kind == "sim":
        from fleet.lab import sim

        sim.power(board, action, wait=wait, timeout=timeout)
        note(f"{name}: power {action}")
        return board
    if action in ("off", "cycle"):
        if qemu.stop(board, hard=True):
            note(f"{name}: power cut")
        board = board.with_pid(None)
        save(board)
        if action == "off":
            return board
    if board.running_pid() is not None:
        raise LabError(f"lab board {name!r} is already powered on (pid {board.running_pid()})")
    if not board.disk.exists():
        raise LabError(f"disk {board.disk} of board {name!r} is gone")
    if wait:
        return _boot(board, timeout, False, note, status, bootdelay)
    return _launch(board, note, bootdelay)[0]
