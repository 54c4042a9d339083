"""fleet hil run on the virtual lab (hardware-in-loop/labs/virtual.toml: two QEMU boards
and a simulated one): the smoke suite with its JUnit file and console logs; the A/B
scenarios with power cuts through the lab's power driver; a 20-cycle soak; locks that two
runs never share and that a SIGKILLed run does not leave behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet.hil import locks
from fleet.hil.labfile import load_lab
from fleet.lab.simrelease import make_release
from tests.conftest import REPO, Built, fleet

pytestmark = pytest.mark.virtual

LAB = REPO / "hardware-in-loop/labs/virtual.toml"
SUITES = REPO / "hardware-in-loop/suites"
BOARDS = ("hil-q1", "hil-q2", "hil-s1")


@pytest.fixture(scope="module", autouse=True)
def lock_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("hil-locks")
    old = os.environ.get("FLEET_HIL_LOCKS")
    os.environ["FLEET_HIL_LOCKS"] = str(folder)
    yield folder
    for name in BOARDS:
        fleet("lab", "down", name, "--rm", check=False)
    if old is None:
        del os.environ["FLEET_HIL_LOCKS"]
    else:
        os.environ["FLEET_HIL_LOCKS"] = old


@pytest.fixture(scope="module")
def sim_releases(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A healthy release 1 and a release 2 whose app fails its health check, for the
    simulated board, and the key they are signed by."""
    base = tmp_path_factory.mktemp("hil-sim")
    fleet("keys", "generate", "--out", base / "keys", "--name", "release")
    key = base / "keys/release.sec"
    good = make_release(base / "r1", key, 1)
    broken = make_release(base / "r2", key, 2, healthy=False)
    return good, broken, base / "keys/release.pub"


def hil_run(
    suite: str, *args: str | Path, timeout: float = 1200
) -> subprocess.CompletedProcess[str]:
    return fleet("hil", "run", SUITES / suite, "--lab", LAB, *args, check=False, timeout=timeout)


def junit_cases(path: Path) -> dict[str, dict[str, str]]:
    """board -> test case name -> passed / failed / error / skipped."""
    found: dict[str, dict[str, str]] = {}
    for suite in ET.parse(path).getroot().iter("testsuite"):
        cases = found.setdefault(suite.get("name", ""), {})
        for case in suite.iter("testcase"):
            kind = next((k for k in ("failure", "error", "skipped") if case.find(k) is not None),
                        "passed")
            cases[case.get("name", "")] = kind
    return found


def test_smoke_on_the_virtual_lab(hello_virt: Built, tmp_path: Path) -> None:
    out = tmp_path / "out.xml"
    proc = hil_run("smoke", "--release", hello_virt.release, "--trust", hello_virt.pub,
                   "--junit", out, "--results", tmp_path / "results")
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    cases = junit_cases(out)
    assert sorted(cases) == sorted(BOARDS)
    for name in ("hil-q1", "hil-q2"):
        assert cases[name] == {
            f"{name}::test_runs_the_release_committed_and_healthy[{name}]": "passed",
            f"{name}::test_the_app_answers_its_health_check_and_version[{name}]": "passed",
            f"{name}::test_commands_and_files_over_ssh[{name}]": "passed",
            f"{name}::test_a_power_cycle_comes_back_up[{name}]": "passed",
            f"{name}::test_boot_time_from_the_boot_chart[{name}]": "passed",
        }, cases[name]
        console = (tmp_path / "results" / name / "console.log").read_text(errors="replace")
        assert console.count("fleet: system up: slot A") >= 2, console[-2000:]  # and the cycle
        agent_log = (tmp_path / "results" / name / "agent.log").read_text()
        assert "this key may run only" not in agent_log, agent_log  # read with the lab's key
    # The simulated board has no HTTP app, shell or console driver: those tests are skipped.
    assert cases["hil-s1"]["hil-s1::test_runs_the_release_committed_and_healthy[hil-s1]"] == (
        "passed"
    )
    assert sorted(cases["hil-s1"].values()) == ["passed"] + ["skipped"] * 4
    assert "hil-q1: 5 passed, 0 failed, 0 errors, 0 skipped" in proc.stdout
    boot = ET.parse(out).getroot().find(".//property[@name='boot_to_healthy_s']")
    assert boot is not None and 0 < float(boot.get("value", "0")) < 120


def test_update_rollback_with_power_cuts_on_one_board(
    hello_virt: Built, hello_v2_virt: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.xml"
    proc = hil_run("update-rollback", "--board", "hil-q1", "--release", hello_virt.release,
                   "--next-release", hello_v2_virt, "--trust", hello_virt.pub, "--junit", out,
                   "--results", tmp_path / "results", "--json")
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    cases = junit_cases(out)["hil-q1"]
    assert len(cases) == 3 and "failure" not in cases.values() and "error" not in cases.values()
    assert cases["hil-q1::test_a_cut_while_streaming_leaves_the_committed_slot[hil-q1]"] == "passed"
    status = json.loads(fleet("status", "hil-q1", "--json").stdout)
    assert status["app"]["version"] == "2.0.0" and status["health"] == "healthy", status
    agent_log = (tmp_path / "results/hil-q1/agent.log").read_text()
    assert "install: release 2 (2.0.0) verified" in agent_log, agent_log
    assert "commit: slot B (release 2)" in agent_log, agent_log


def test_soak_of_20_cycles_on_a_simulated_board(
    sim_releases: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    good, broken, pub = sim_releases
    out = tmp_path / "out.xml"
    proc = hil_run("soak", "--board", "hil-s1", "--release", good, "--next-release", broken,
                   "--trust", pub, "--cycles", "20", "--junit", out,
                   "--results", tmp_path / "results")
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    cases = junit_cases(out)["hil-s1"]
    assert cases == {f"hil-s1::test_cycle[hil-s1-cycle-{n}]": "passed" for n in range(1, 21)}
    cuts = [p.get("value", "") for p in ET.parse(out).getroot().iter("property")
            if p.get("name") == "cut_at"]
    assert any(c.startswith("byte ") for c in cuts) and any("into the trial" in c for c in cuts)


def holder_pid(board: str) -> int | None:
    rows = json.loads(fleet("hil", "boards", "--lab", LAB, "--json").stdout)
    held = next(r for r in rows if r["board"] == board)["held_by"]
    return int(held["pid"]) if held else None


def run_pids(parent: int) -> list[int]:
    """Processes started for the run PARENT (its pytest, by the variable it sets)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                env = (entry / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"FLEET_HIL_RUN_PID={parent}".encode() in env:
                found.append(int(entry.name))
    return found


def test_two_runs_never_share_a_board_and_a_killed_run_leaves_no_lock(
    sim_releases: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    good, broken, pub = sim_releases
    first = subprocess.Popen(
        [sys.executable, "-m", "fleet.cli.main", "hil", "run", SUITES / "soak", "--lab", LAB,
         "--board", "hil-s1", "--release", good, "--next-release", broken, "--trust", pub,
         "--cycles", "50", "--results", tmp_path / "first"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while holder_pid("hil-s1") != first.pid:
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.2)
        second = hil_run("smoke", "--board", "hil-s1", "--release", good, "--trust", pub,
                         "--results", tmp_path / "second", timeout=60)
        assert second.returncode != 0
        assert f"board 'hil-s1' of lab 'virtual' is in use by pid {first.pid}" in second.stderr
        assert not (tmp_path / "second" / "hil-s1").exists()  # nothing ran on it
        deadline = time.monotonic() + 60
        while not run_pids(first.pid):  # its pytest is at work on the board
            assert time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate()
    # The lock went with the process, and the run's pytest went with it.
    assert holder_pid("hil-s1") is None
    deadline = time.monotonic() + 20
    while run_pids(first.pid):
        assert time.monotonic() < deadline, run_pids(first.pid)
        time.sleep(0.2)
    with locks.acquire(load_lab(LAB), "hil-s1"):
        assert holder_pid("hil-s1") == os.getpid()
