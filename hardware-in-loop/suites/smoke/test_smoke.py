"""Smoke: the board runs the release under test, committed, its app healthy and of the
right version; commands and files go over SSH (where the image has a shell); it comes
back up after a power cycle; and its boot took what the boot
chart says (where the board's console is stamped: the virtual lab's boards)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fleet import lab
from fleet.hil.board import HilBoard
from fleet.hil.console import Console
from fleet.hil.power import Power
from fleet.hil.release import Release
from fleet.hil.remote import Http, Ssh


def test_runs_the_release_committed_and_healthy(hil_board: HilBoard, release: Release) -> None:
    now = hil_board.status()
    assert now.committed and now.health == "healthy", now.raw
    assert now.app_version == release.version
    info = now.slot(now.running_slot)
    assert info is not None and info.manifest_sha256 == release.sha256, now.raw


@pytest.mark.feature("app-http")
def test_the_app_answers_its_health_check_and_version(http: Http, release: Release) -> None:
    status, _ = http.get("/health")
    assert status == 200
    status, body = http.get("/version")
    assert (status, body.strip()) == (200, release.version)


@pytest.mark.feature("shell")
def test_commands_and_files_over_ssh(ssh: Ssh, release: Release, tmp_path: Path) -> None:
    answer = ssh.run(". /etc/fleet/app.env && echo \"$FLEET_APP_VERSION\"")
    assert answer.ok and answer.stdout.strip() == release.version, answer
    probe = tmp_path / "probe"
    probe.write_bytes(os.urandom(200_000))
    ssh.put(probe, "/run/hil-probe")
    assert ssh.get("/run/hil-probe") == probe.read_bytes()
    assert ssh.run("rm /run/hil-probe").ok


@pytest.mark.feature("console")
def test_a_power_cycle_comes_back_up(
    hil_board: HilBoard, power: Power, console: Console, release: Release
) -> None:
    power.cycle()
    found = console.expect(r"fleet: system up: slot (A|B)", timeout=180)
    now = hil_board.status()
    assert now.running_slot == found[1] and now.app_version == release.version


@pytest.mark.feature("console")
def test_boot_time_from_the_boot_chart(
    hil_board: HilBoard, record_property: pytest.RecordProperty
) -> None:
    if hil_board.virtual is None or hil_board.virtual.kind != "qemu":
        pytest.skip("no boot chart: the console of this board is not time-stamped by the lab")
    chart = lab.boot_chart(lab.get(hil_board.name))
    assert chart.total is not None, f"the boot chart misses {chart.missing}"
    record_property("boot_to_healthy_s", round(chart.total, 2))
    for phase in chart.phases:
        if phase.at is not None:
            record_property(f"boot_{phase.name}_s", round(phase.at, 2))
    assert 0 < chart.total < 120
