"""Putting the release under test on a board before its tests, by the board's provision
driver: a virtual board made again from the release's disk (virtual-flash), a card
written in its USB reader (usb-flash), an A/B update (update), or a power cycle into
what `fleet serve` netboots (netboot)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from fleet import lab as vlab
from fleet.errors import FleetError, LabError
from fleet.hil.board import HilBoard
from fleet.hil.labfile import UsbDisk
from fleet.hil.release import Release
from fleet.lab import sim
from fleet.update import machine
from fleet.update.result import Outcome
from signing import TrustSet

UP_TIMEOUT = 300.0  # seconds for a real board to answer after a power cycle


def provision(
    board: HilBoard, release: Release | None, trust: TrustSet | None, trust_path: Path | None
) -> None:
    """``trust`` verifies what goes on the board; ``trust_path`` (its files) is what a
    simulated board made afresh pins."""
    if release is None:
        return  # the boards are tested as they are
    how = board.spec.drivers.provision
    if how == "virtual-flash":
        _virtual_flash(board, release, trust_path)
    elif how == "update":
        _update(board, release, trust)
    elif how == "usb-flash":
        _usb_flash(board, release)
    elif how == "netboot":
        board.power.cycle()
        _wait_answers(board)
    else:
        raise LabError(f"board {board.name}: unknown provision driver {how!r}")


def _virtual_flash(board: HilBoard, release: Release, trust_path: Path | None) -> None:
    virtual = board.virtual
    assert virtual is not None  # the lab file checked the driver has its resource
    if any(b.name == board.name for b in vlab.list_boards()):
        vlab.down(board.name, remove=True)  # made again: flashed anew
    if virtual.kind == "sim":
        if trust_path is None:
            raise LabError("a simulated board is made trusting the run's keys: give --trust")
        sim.up(1, trust_path, names=[board.name], release=release.folder)
        return
    if not release.disk.is_file():
        raise LabError(f"{release.disk}: no disk image beside the release (fleet build's out/)")
    vlab.up(board.spec.profile, release.disk, board.name)


def _update(board: HilBoard, release: Release, trust: TrustSet | None) -> None:
    options = machine.Options(trust=trust, skip_current=True)
    result = machine.update(board.target, release.folder, options)
    if result.outcome not in (Outcome.UPDATED, Outcome.SKIPPED):
        raise LabError(f"update to {release.version}: {result.summary()}")


def _usb_flash(board: HilBoard, release: Release) -> None:
    disk = board.spec.resources[UsbDisk.key]
    assert isinstance(disk, UsbDisk)
    board.power.off()
    flash = [
        sys.executable,
        "-m",
        "fleet.cli.main",
        "flash",
        str(release.disk),
        "--device",
        disk.device,
        "--yes",
    ]
    done = subprocess.run(flash, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        said = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise LabError(f"flashing {disk.device} failed: {said}")
    board.power.on()
    _wait_answers(board)


def _wait_answers(board: HilBoard, timeout: float = UP_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    problem = "no answer"
    while time.monotonic() < deadline:
        try:
            board.status()
            return
        except FleetError as exc:
            problem = str(exc)
            time.sleep(2.0)
    raise LabError(f"board {board.name} did not answer within {timeout:.0f} s ({problem})")
