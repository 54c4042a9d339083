"""``fleet lab netboot``: one virtual board netbooted from `fleet serve`, start to end.

The server and the board share a network namespace made for the run (netbooted.py); the
board's disk, when given, is a copy, hashed before power-on and after power-off, so the
run says whether a netbooted board wrote it. Logs stay in the lab's ``netboot/`` folder."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fleet.boards import BoardProfile
from fleet.errors import LabError, UsageError
from fleet.hashing import sha256_file
from fleet.lab.disk import MTOOLS_ENV
from fleet.lab.netbooted import BOARD, SERVER, NetLab, board_argv
from fleet.lab.state import lab_root
from fleet.release import Payload, load_manifest
from fleet.run import run

# A user's U-Boot for a fast netboot: Ethernet-frame blocks, and windowsize (RFC 7440) so
# U-Boot does not wait for each block's ACK (docs/netboot.md has the figures).
UBOOT_TFTP = ("tftpblocksize=1468", "tftpwindowsize=16")
BLANK_DISK = 64 << 20
_TRANSFER = re.compile(
    r"board=\S+ file=(?P<file>\S+) bytes=(?P<bytes>\d+) seconds=(?P<seconds>[\d.]+) "
    r"rate=(?P<rate>[\d.]+)MiB/s .* (?P<result>\S+)$"
)


@dataclass
class Fetched:
    file: str
    bytes: int
    seconds: float
    rate_mib_s: float


@dataclass
class NetbootResult:
    ok: bool
    seconds: float  # power-on to the app's first passing health check (or to the failure)
    version: str | None = None
    failure: str | None = None
    disk_unchanged: bool = True
    fetched: list[Fetched] = field(default_factory=list)
    folder: Path = Path()

    def to_json(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "seconds": round(self.seconds, 2),
            "version": self.version,
            "failure": self.failure,
            "disk_unchanged": self.disk_unchanged,
            "fetched": [f.__dict__ for f in self.fetched],
            "logs": str(self.folder),
        }


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def _fetched(log: str) -> list[Fetched]:
    found = []
    for line in log.splitlines():
        match = _TRANSFER.search(line)
        if match and match["result"] == "ok":
            found.append(
                Fetched(
                    match["file"],
                    int(match["bytes"]),
                    float(match["seconds"]),
                    float(match["rate"]),
                )
            )
    return found


def netboot(
    profile: BoardProfile,
    release: Path,
    trust: Path,
    disk: Path | None = None,
    timeout: float = 240.0,
    progress: Callable[[str], None] = lambda _: None,
) -> NetbootResult:
    """Netboot ``profile``'s virtual board with ``release`` served (checked against
    ``trust``) and return what happened; the app's version is asked over the namespace's
    network once it is healthy."""
    manifest = load_manifest(release)  # fleet serve checks the signatures; this is the port
    if not _netbootable(release, manifest.payloads):
        raise UsageError(f"{release}: not netbootable (build it with fleet build --netboot)")
    folder = lab_root() / "netboot"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    board_disk = folder / "disk.img"
    if disk is not None:
        shutil.copyfile(disk, board_disk)
    else:
        with board_disk.open("wb") as handle:
            handle.truncate(BLANK_DISK)
    before = sha256_file(board_disk)
    pid = os.getpid()
    net = NetLab(f"fleet-netboot-{pid}", f"fnb{pid % 1000000}").up()
    serve_log = folder / "serve.log"
    serve: subprocess.Popen[bytes] | None = None
    qemu: subprocess.Popen[bytes] | None = None
    started = time.monotonic()
    try:
        progress(f"fleet serve on {SERVER} in namespace {net.namespace}")
        with serve_log.open("wb") as log:
            command = [sys.executable, "-m", "fleet.cli.main", "serve"]
            serve = subprocess.Popen(
                net.inside(*command, "--release", release, "--trust", trust, "--bind", SERVER),
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        _wait(lambda: "serving" in _read(serve_log), serve, serve_log, 60, "fleet serve")
        progress(f"powering on {profile.name} at {BOARD}")
        argv = board_argv(profile, net, folder, board_disk, UBOOT_TFTP)
        started = time.monotonic()
        with (folder / "qemu.err").open("wb") as err:
            qemu = subprocess.Popen(net.inside(*argv), stdout=subprocess.DEVNULL, stderr=err)
        console = folder / "console.log"
        outcome = _wait(
            lambda: _outcome(_read(console)), serve, serve_log, timeout, "the board", qemu
        )
        seconds = time.monotonic() - started
        result = NetbootResult(ok=outcome == "healthy", seconds=seconds, folder=folder)
        if result.ok:
            result.version = _ask(net, manifest.health.port, "/version")
        else:
            result.failure = outcome
    except LabError as exc:
        result = NetbootResult(False, time.monotonic() - started, failure=str(exc), folder=folder)
    finally:
        for proc in (qemu, serve):
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        net.down()
    result.fetched = _fetched(_read(serve_log))
    result.disk_unchanged = sha256_file(board_disk) == before
    return result


def _netbootable(release: Path, payloads: tuple[Payload, ...]) -> bool:
    boot = next((p for p in payloads if p.name == "boot"), None)
    if boot is None:
        return False
    listing = run(["mdir", "-b", "-i", release / boot.file, "::/"], env=MTOOLS_ENV, check=False)
    return b"::/boot.scr.uimg" in listing.stdout


def _outcome(console: str) -> str | None:
    if "fleet: app healthy" in console:
        return "healthy"
    for line in console.splitlines():
        if "fleet: boot failed:" in line:
            return line.split("fleet: boot failed:", 1)[1].strip()
    return None


def _wait(
    check: Callable[[], str | bool | None],
    serve: subprocess.Popen[bytes],
    serve_log: Path,
    timeout: float,
    what: str,
    qemu: subprocess.Popen[bytes] | None = None,
) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return str(found)
        if serve.poll() is not None:
            lines = _read(serve_log).strip().splitlines() or ["no output"]
            raise LabError(f"fleet serve stopped: {lines[-1]}")
        if qemu is not None and qemu.poll() is not None:
            raise LabError(f"QEMU stopped (exit {qemu.returncode})")
        time.sleep(0.2)
    raise LabError(f"{what} did not get there in {timeout:.0f} s")


def _ask(net: NetLab, port: int, path: str) -> str | None:
    answer = subprocess.run(
        net.inside("curl", "-s", "--max-time", "5", f"http://{BOARD}:{port}{path}"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    return answer.stdout.strip() if answer.returncode == 0 else None
