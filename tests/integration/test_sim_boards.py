"""Simulated boards as a user drives them (docs/lab.md): real SSH to the board's own agent,
an A/B update that lands in the slot's partition file, a fault that rolls a trial back,
power cuts, an inventory of what runs, and nothing left behind at the end."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet import inventory
from fleet.lab import state
from fleet.lab.simrelease import make_release
from tests.conftest import fleet

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="simulated boards need root"),
]

NAMES = ("sb-1", "sb-2", "sb-3")


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("sim-keys")
    fleet("keys", "generate", "--out", folder, "--name", "release")
    return folder / "release.sec", folder / "release.pub"


@pytest.fixture(scope="module")
def boards(keys: tuple[Path, Path]) -> Iterator[tuple[str, ...]]:
    fleet("lab", "up", "--sim", "--count", "3", "--name", "sb", "--trust", keys[1])
    yield NAMES
    for name in NAMES:
        fleet("lab", "down", name, "--rm", check=False)
    root = str(state.lab_root())
    for name in NAMES:
        assert not (state.lab_root() / name).exists()
    assert f"{root}/sb-" not in Path("/proc/mounts").read_text()
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    assert f"{root}/sb-" not in loops


def status(name: str) -> dict:  # type: ignore[type-arg]
    return dict(json.loads(fleet("status", name, "--json").stdout))


def test_a_sim_board_answers_over_ssh_with_its_agent(boards: tuple[str, ...]) -> None:
    now = status(boards[0])
    assert now["running_slot"] == "A" and now["default_slot"] == "A"
    assert now["health"] == "healthy" and now["hostname"] == boards[0]
    assert now["board"] == "qemu-virt-arm64" and now["slots"]["B"] is None
    listed = json.loads(fleet("lab", "list", "--json").stdout)
    assert {b["name"]: b["kind"] for b in listed}[boards[0]] == "sim"


def test_an_update_lands_in_the_slots_partition_and_commits(
    boards: tuple[str, ...], keys: tuple[Path, Path], tmp_path: Path
) -> None:
    release = make_release(tmp_path / "r2", keys[0], 2)
    proc = fleet("update", boards[0], release, "--trust", keys[1], "--json")
    result = json.loads(proc.stdout)
    assert result["outcome"] == "updated" and result["running_slot"] == "B"
    now = status(boards[0])
    assert now["running_slot"] == now["default_slot"] == "B" and now["floor"] == 2
    assert now["slots"]["B"]["release"] == 2
    parts = state.lab_root() / boards[0] / "parts"
    for name, number in (("boot", 3), ("rootfs", 6)):
        payload = (release / f"{name}.img").read_bytes()
        with (parts / f"p{number}.img").open("rb") as handle:
            assert handle.read(len(payload)) == payload


def test_faults_roll_a_trial_back_on_the_board(
    boards: tuple[str, ...], keys: tuple[Path, Path], tmp_path: Path
) -> None:
    bad = make_release(tmp_path / "bad", keys[0], 3, healthy=False)
    proc = fleet("update", boards[1], bad, "--trust", keys[1], "--json", check=False)
    result = json.loads(proc.stdout)
    assert proc.returncode == 10 and result["reason"] == "health failed", result
    assert status(boards[1])["running_slot"] == "A"
    fleet("lab", "sim-fault", boards[1], "hang")
    good = make_release(tmp_path / "good", keys[0], 4)
    proc = fleet("update", boards[1], good, "--trust", keys[1], "--json", check=False)
    result = json.loads(proc.stdout)
    # The check never answers: the board's health deadline (10 s) rolls the trial back.
    assert proc.returncode == 10 and result["running_slot"] == "A", result
    assert "did not finish" in result["detail"] or "no passing" in result["detail"], result
    fleet("lab", "sim-fault", boards[1], "none")


def test_power_cut_and_back(boards: tuple[str, ...]) -> None:
    before = status(boards[2])["boot_id"]
    fleet("lab", "power", boards[2], "off")
    gone = fleet("status", boards[2], check=False)
    assert gone.returncode == 8 and len(gone.stderr.strip().splitlines()) == 1
    fleet("lab", "power", boards[2], "on")
    after = status(boards[2])
    assert after["boot_id"] != before and after["running_slot"] == "A"
    fleet("lab", "power", boards[2], "cycle")
    assert status(boards[2])["boot_id"] != after["boot_id"]


def test_the_lab_writes_an_inventory_of_what_runs(
    boards: tuple[str, ...], tmp_path: Path
) -> None:
    path = tmp_path / "fleet.toml"
    fleet("lab", "inventory", "--out", path, "--prefix", "sb", "--group", "desk")
    fleet_inventory = inventory.load(path)
    assert [h.name for h in fleet_inventory.hosts] == list(boards)
    for host in fleet_inventory.hosts:
        assert host.address == "127.0.0.1" and host.port == state.load(host.name).ssh_port
        assert host.groups == ("desk",) and host.profile == "qemu-virt-arm64"
