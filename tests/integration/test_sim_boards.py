"""Simulated boards as a user drives them (docs/lab.md, "Simulated boards"): real SSH to the
board's own agent, an A/B update that lands in the slot's partition file, an unhealthy
release and a hung health check rolled back by the board, power cuts, a down that keeps
the boot state, the agent's own lines on the console, an inventory of what runs, and
nothing left behind at the end."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fleet import inventory
from fleet.lab import simboot, simtree, state
from fleet.lab.simrelease import make_release
from tests.conftest import fleet

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        os.geteuid() != 0 or not all(shutil.which(p) for p in simtree.HOST_PROGRAMS),
        reason="simulated boards need root, dropbear and signify-openbsd",
    ),
]

NAMES = ("sim-1", "sim-2", "sim-3")
HEALTH_TIMEOUT = 5


@dataclass(frozen=True)
class Lab:
    root: Path
    sec: Path
    pub: Path
    r1: Path


def _leftovers(root: Path) -> list[str]:
    """Loop devices, mounts and processes of the lab root that still exist."""
    found = []
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    found += [line for line in loops.splitlines() if str(root) in line]
    found += [line for line in Path("/proc/mounts").read_text().splitlines() if str(root) in line]
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            where = os.readlink(proc / "root")
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if where.startswith(str(root)) or str(root).encode() in cmdline:
            found.append(f"process {proc.name}: {cmdline.decode(errors='replace')!r}")
    return found


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """Three boards sim-1..3 in a lab root of this module's own, slot A holding release 1."""
    base = tmp_path_factory.mktemp("sim")
    root = base / "lab"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FLEET_LAB_DIR", str(root))
        fleet("keys", "generate", "--out", base / "keys", "--name", "release")
        sec, pub = base / "keys/release.sec", base / "keys/release.pub"
        r1 = make_release(base / "r1", sec, 1)
        fleet("lab", "up", "--sim", "--count", "3", "--release", r1, "--trust", pub,
              "--health-timeout", str(HEALTH_TIMEOUT))
        try:
            yield Lab(root, sec, pub, r1)
        finally:
            for name in NAMES:
                fleet("lab", "down", name, "--remove", check=False)
            deadline = time.monotonic() + 10
            while _leftovers(root) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert _leftovers(root) == []
            assert not any((root / name).exists() for name in NAMES)


def status(name: str) -> dict:  # type: ignore[type-arg]
    return dict(json.loads(fleet("status", name, "--json").stdout))


def test_a_sim_board_answers_over_ssh_with_its_agent(lab: Lab) -> None:
    now = status("sim-1")
    assert now["running_slot"] == "A" and now["default_slot"] == "A" and now["trial_slot"] == ""
    assert now["health"] == "healthy" and now["hostname"] == "sim-1"
    assert now["app"] == {"name": "sim", "release": 1, "version": "1.0.0"}
    manifest_sha = hashlib.sha256((lab.r1 / "manifest.json").read_bytes()).hexdigest()
    assert now["slots"]["A"] == {"release": 1, "version": "1.0.0", "manifest_sha256": manifest_sha}
    assert now["board"] == "qemu-virt-arm64" and now["slots"]["B"] is None
    listed = json.loads(fleet("lab", "list", "--json").stdout)
    assert {b["name"]: (b["kind"], b["state"]) for b in listed} == {
        n: ("sim", "running") for n in NAMES
    }


def test_without_a_release_slot_a_holds_the_factory_release(lab: Lab) -> None:
    fleet("lab", "up", "--sim", "--count", "1", "--name", "factory", "--trust", lab.pub)
    try:
        now = status("factory-1")
        assert now["app"] == {"name": "sim", "release": 1, "version": "0.0.0-sim"}
        assert now["running_slot"] == "A" and now["health"] == "healthy"
    finally:
        fleet("lab", "down", "factory-1", "--remove")


def test_an_update_lands_in_the_slots_partition_and_commits(lab: Lab, tmp_path: Path) -> None:
    release = make_release(tmp_path / "r2", lab.sec, 2)
    proc = fleet("update", "sim-2", release, "--trust", lab.pub)
    assert "updated" in proc.stdout, proc.stdout
    now = status("sim-2")
    assert now["running_slot"] == now["default_slot"] == "B" and now["trial_slot"] == ""
    assert now["floor"] == 2 and now["slots"]["B"]["release"] == 2
    assert now["app"]["version"] == "2.0.0" and now["health"] == "healthy"
    parts = lab.root / "sim-2" / "parts"
    for name, number in (("boot", 3), ("rootfs", 6)):
        payload = (release / f"{name}.img").read_bytes()
        with (parts / f"p{number}.img").open("rb") as handle:
            assert handle.read(len(payload)) == payload
            assert handle.read(1 << 20) == bytes(1 << 20)  # and nothing after it
    # The agent's and health watcher's own words reach the board's console.
    console = fleet("lab", "console", "sim-2", "--log").stdout
    assert "fleet: trial boot of slot B" in console and "fleet: committed slot B" in console


def test_an_unhealthy_release_and_a_hung_check_roll_back(lab: Lab, tmp_path: Path) -> None:
    bad = make_release(tmp_path / "bad", lab.sec, 3, healthy=False)
    proc = fleet("update", "sim-1", bad, "--trust", lab.pub, "--json", check=False)
    result = json.loads(proc.stdout)
    assert proc.returncode == 10 and result["outcome"] == "rolled-back", result
    assert result["reason"] == "health failed", result
    assert status("sim-1")["running_slot"] == "A"

    fleet("lab", "sim-fault", "sim-1", "hang")
    good = make_release(tmp_path / "good", lab.sec, 4)
    started = time.monotonic()
    proc = fleet("update", "sim-1", good, "--trust", lab.pub, "--json", check=False)
    result = json.loads(proc.stdout)
    # The check never answers: the board's own deadline rolls the trial back.
    assert proc.returncode == 10 and result["running_slot"] == "A", result
    assert "did not finish" in result["detail"], result
    assert time.monotonic() - started < 60
    fleet("lab", "sim-fault", "sim-1", "none")
    fleet("lab", "power", "sim-1", "cycle")
    now = status("sim-1")
    assert now["health"] == "healthy" and now["app"]["release"] == 1


def test_power_cut_and_back(lab: Lab) -> None:
    before = status("sim-3")["boot_id"]
    fleet("lab", "power", "sim-3", "off")
    gone = fleet("status", "sim-3", check=False)
    assert gone.returncode != 0 and len(gone.stderr.strip().splitlines()) == 1, gone.stderr
    assert "stopped" in fleet("lab", "list").stdout.split("sim-3", 1)[1].splitlines()[0]
    fleet("lab", "power", "sim-3", "on")
    after = status("sim-3")
    assert after["boot_id"] != before and after["running_slot"] == "A"
    fleet("lab", "power", "sim-3", "cycle")
    assert status("sim-3")["boot_id"] != after["boot_id"]


def test_an_ssh_port_taken_while_the_board_was_off_is_tried_again(lab: Lab) -> None:
    port = state.load("sim-3").ssh_port
    fleet("lab", "power", "sim-3", "off")
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        fleet("lab", "power", "sim-3", "on", "--no-wait")
        time.sleep(1.5)
        assert fleet("status", "sim-3", check=False).returncode != 0
    deadline = time.monotonic() + 10
    while fleet("status", "sim-3", check=False).returncode != 0:
        assert time.monotonic() < deadline, "dropbear was not started again"
        time.sleep(0.2)


def test_a_board_taken_down_keeps_its_boot_state(lab: Lab) -> None:
    fleet("lab", "down", "sim-2")
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    assert f"{lab.root}/sim-2/" not in loops
    assert f"{lab.root}/sim-2/" not in Path("/proc/mounts").read_text()
    fleet("lab", "power", "sim-2", "on")
    now = status("sim-2")
    assert now["running_slot"] == now["default_slot"] == "B" and now["floor"] == 2


def test_the_lab_writes_an_inventory_of_what_runs(lab: Lab, tmp_path: Path) -> None:
    doc = tomllib.loads(fleet("lab", "inventory").stdout)
    ports = {name: state.load(name).ssh_port for name in NAMES}
    assert {b["name"]: b["port"] for b in doc["boards"]} == ports
    for board in doc["boards"]:
        assert board["address"] == "127.0.0.1" and board["user"] == "root"
        assert board["key"] == str(lab.root / "id_ed25519")
        assert board["known_hosts"] == str(lab.root / "known_hosts")
        assert board["profile"] == "qemu-virt-arm64" and board["groups"] == ["sim"]
    path = tmp_path / "fleet.toml"
    fleet("lab", "inventory", "--out", path, "--group", "desk", "--group", "canary")
    hosts = inventory.load(path).hosts
    assert [h.name for h in hosts] == list(NAMES)
    assert all(set(h.groups) == {"desk", "canary"} and h.port == ports[h.name] for h in hosts)


def test_the_sim_init_and_namespace_init_pass_shellcheck(tmp_path: Path) -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed")
    (tmp_path / "sim-init").write_text(simtree.SIM_INIT)
    (tmp_path / "ns-init").write_text(f"#!/bin/sh\n{simboot.NS_INIT}\n")
    proc = subprocess.run(
        ["shellcheck", "-s", "sh", "-S", "warning", "sim-init", "ns-init"],
        cwd=tmp_path, capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stdout
