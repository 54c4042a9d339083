"""The boot chart on a real boot of the virtual board: `fleet lab boot-time` finds every
phase from power-on to a healthy app, in order, on a first boot and after a power cycle."""

from __future__ import annotations

import json
import time

import pytest

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


def test_boot_chart_finds_every_phase(hello_virt: Built) -> None:
    fleet("lab", "up", "--board", "qemu-virt-arm64", "--disk", hello_virt.disk, "--name", BOARD)
    try:
        check(chart_when_healthy())
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
