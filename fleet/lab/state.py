"""Where the lab keeps its boards: one folder per board under the lab root, holding
board.json (what the board is and how QEMU runs it), the disk copy, the console log and
sockets, and QEMU's pidfile. The lab root also holds the lab's own SSH client key and
its known_hosts, shared by all its boards."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from fleet import atomic
from fleet.errors import LabError, UsageError

NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?$")
STATE_VERSION = 1


def lab_root() -> Path:
    if "FLEET_LAB_DIR" in os.environ:
        return Path(os.environ["FLEET_LAB_DIR"]).absolute()
    state_home = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state_home) / "fleet" / "lab"


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise UsageError(
            f"bad board name {name!r}: use 1-32 of a-z, 0-9 and '-', not starting or ending "
            "with '-'"
        )
    return name


@dataclass(frozen=True)
class Extract:
    """A file QEMU needs that lives on the disk's first partition (the Pi's GPU firmware
    would load it from there): copied out before every power on, as the firmware would."""

    member: str  # name on the FAT partition
    dest: str  # path in the state folder
    required: bool


@dataclass(frozen=True)
class Board:
    name: str
    profile: str
    disk: Path
    in_place: bool
    ssh_port: int
    app_port: int
    app_guest_port: int
    qemu_argv: tuple[str, ...]
    extracts: tuple[Extract, ...]
    up_line: str
    wait_ssh: bool
    pid: int | None
    root: Path
    kind: str = "qemu"  # or "sim": a simulated board (fleet.lab.sim)

    @property
    def state_dir(self) -> Path:
        return self.root / self.name

    @property
    def console_log(self) -> Path:
        return self.state_dir / "console.log"

    @property
    def console_socket(self) -> Path:
        return self.state_dir / "console.sock"

    @property
    def monitor_socket(self) -> Path:
        return self.state_dir / "monitor.sock"

    @property
    def pidfile(self) -> Path:
        return self.state_dir / "qemu.pid"

    @property
    def key_path(self) -> Path:
        """The agent's key: on the board it may run only the agent's verbs."""
        return self.root / "id_ed25519"

    @property
    def shell_key_path(self) -> Path:
        """The shell key: a development image (fleet build --dev) lets it in as root."""
        return self.root / "shell_ed25519"

    @property
    def known_hosts_path(self) -> Path:
        return self.root / "known_hosts"

    def with_pid(self, pid: int | None) -> Board:
        return replace(self, pid=pid)

    def running_pid(self) -> int | None:
        """QEMU's pid if it runs for this board (a simulated board: its namespace's); a pid
        reused by another program is not."""
        if self.kind == "sim":
            try:
                sim_pid = int((self.state_dir / "board.pid").read_text().strip())
            except (OSError, ValueError):
                return None
            return sim_pid if _is_our_qemu(sim_pid, str(self.state_dir / "tree")) else None
        pid = self.pid
        with contextlib.suppress(OSError, ValueError):
            pid = int(self.pidfile.read_text().strip())
        if pid is None:
            return None
        return pid if _is_our_qemu(pid, str(self.pidfile)) else None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["version"] = STATE_VERSION
        data["disk"] = str(self.disk)
        data["qemu_argv"] = list(self.qemu_argv)
        data["extracts"] = [asdict(e) for e in self.extracts]
        del data["root"]
        return data


def _is_our_qemu(pid: int, marker: str) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # A zombie has exited; only its parent's wait() is missing.
    state = stat.rpartition(")")[2].split()[0]
    return state != "Z" and marker.encode() in cmdline


def board_json(root: Path, name: str) -> Path:
    return root / name / "board.json"


def save(board: Board) -> None:
    text = json.dumps(board.to_json(), indent=2, sort_keys=True) + "\n"
    atomic.write_text(board_json(board.root, board.name), text)


def load(name: str, root: Path | None = None) -> Board:
    base = root or lab_root()
    check_name(name)
    path = board_json(base, name)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        known = ", ".join(b.name for b in all_boards(base)) or "none"
        raise LabError(f"no lab board named {name!r} (boards: {known})") from None
    except (OSError, ValueError) as exc:
        raise LabError(f"cannot read {path}: {exc}") from exc
    try:
        return Board(
            name=data["name"],
            profile=data["profile"],
            disk=Path(data["disk"]),
            in_place=bool(data["in_place"]),
            ssh_port=int(data["ssh_port"]),
            app_port=int(data["app_port"]),
            app_guest_port=int(data["app_guest_port"]),
            qemu_argv=tuple(str(a) for a in data["qemu_argv"]),
            extracts=tuple(Extract(**e) for e in data["extracts"]),
            up_line=str(data["up_line"]),
            wait_ssh=bool(data["wait_ssh"]),
            pid=None if data["pid"] is None else int(data["pid"]),
            root=base,
            kind=str(data.get("kind", "qemu")),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise LabError(f"{path} is malformed ({exc}); remove the folder {path.parent}") from exc


def all_boards(root: Path | None = None) -> list[Board]:
    base = root or lab_root()
    if not base.is_dir():
        return []
    return [load(p.parent.name, base) for p in sorted(base.glob("*/board.json"))]


def kill(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError as exc:
        raise LabError(f"cannot signal QEMU (pid {pid}): {exc.strerror}") from exc
