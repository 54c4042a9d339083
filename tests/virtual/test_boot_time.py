"""The boot chart on a real boot of the virtual board: `fleet lab boot-time` finds every
phase from power-on to a healthy app, in order, on a first boot and after a power cycle;
and what the faster boot is made of holds on that board: every module loaded by one
fleet-modules call per stage, dm-verity hashing with the CPU's SHA-256 instructions, and
a first boot that only mounts the build's journaled data filesystem."""

from __future__ import annotations

import json
import time

import pytest

from fleet import lab
from fleet.boards import get_profile
from fleet.lab import bootchart
from tests.conftest import Built, fleet

pytestmark = pytest.mark.virtual
BOARD = "boot-time-virt"


def chart_when_healthy(timeout: float = 60) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        data = json.loads(fleet("lab", "boot-time", BOARD, "--json").stdout)
        if data["total_s"] is not None or time.monotonic() > deadline:
            return data  # type: ignore[no-any-return]
        time.sleep(0.5)


def check(data: dict[str, object]) -> None:
    assert data["origin"] == "machine"
    assert data["missing"] == [], data
    at = {p["name"]: p["at_s"] for p in data["phases"]}  # type: ignore[attr-defined]
    chain = ["machine", "bootloader", "kernel", "initramfs", "root", "init"]
    assert [at[n] for n in chain] == sorted(at[n] for n in chain), at
    for name in ("network", "ssh", "app"):
        assert at[name] >= at["init"], at
    assert at["healthy"] >= at["app"], at
    assert 0 < data["total_s"] < 60  # type: ignore[operator]


def run(command: str) -> tuple[int, str]:
    with lab.session(lab.get(BOARD)) as session:
        result = session.exec(command)
    return result.exit_code, (result.stdout + result.stderr).decode()


def check_boot_parts() -> None:
    console = lab.get(BOARD).console_log.read_text(errors="replace")
    assert "cannot load" not in console and "data partition is blank" not in console
    # Every module of the profile, both stages, is in the kernel.
    kernel = get_profile("qemu-virt-arm64").kernel
    status, loaded = run("cat /proc/modules")
    names = {line.split()[0] for line in loaded.splitlines()}
    wanted = {m.replace("-", "_") for m in [*kernel.boot_modules, *kernel.modules]}
    assert status == 0 and wanted <= names, wanted - names
    # The loader names what it cannot load and fails; one already loaded is no failure.
    status, out = run("/usr/sbin/fleet-modules /lib/modules/missing.ko")
    assert status == 1 and "fleet-modules: cannot open /lib/modules/missing.ko" in out
    status, ext4 = run("find /lib/modules -name ext4.ko")
    status, out = run(f"/usr/sbin/fleet-modules {ext4.strip()}")
    assert status == 0, out
    # dm-verity hashes with the ARMv8 SHA-256 instructions (sha2-ce), not generic C.
    status, log = run("dmesg")
    assert 'verity: sha256 using implementation "sha256-ce"' in log, log[-3000:]
    # The first boot mounted the data filesystem the build made: ext4 with a journal.
    assert "EXT4-fs (vda7): mounted filesystem" in log and "without journal" not in log
    status, state = run("cat /run/fleet/data-state")
    assert state.strip() == "ok"


def test_boot_chart_finds_every_phase(hello_virt: Built) -> None:
    fleet("lab", "up", "--board", "qemu-virt-arm64", "--disk", hello_virt.disk, "--name", BOARD)
    try:
        check(chart_when_healthy())
        check_boot_parts()
        table = fleet("lab", "boot-time", BOARD).stdout
        assert "total to a healthy app" in table and "phases not found" not in table
        fleet("lab", "power", BOARD, "cycle")
        again = chart_when_healthy()
        check(again)
        # The chart is of the last boot: the power cycle's, which made no host key.
        assert again["total_s"] is not None
        names = [p["name"] for p in again["phases"]]  # type: ignore[attr-defined]
        assert names == list(bootchart.NAMES)
    finally:
        fleet("lab", "down", BOARD, "--rm", check=False)
