"""A rollout over four QEMU boards running real images: the canary updates, the second
board's card fails its writes (QEMU blkdebug), the fleet-wide budget of 0 halts the
rollout, and the last two boards are never touched. A second rollout with a budget of 1
skips the canary (it runs the release already) and finishes the rest."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet.release import load_manifest
from fleet.update import journal as j
from fleet.update import machine
from fleet.update.target import resolve
from tests.conftest import NEEDS_QEMU, Built, fleet
from tests.virtual.test_storage_faults import ROOT_B, faults, sector_in

pytestmark = [pytest.mark.virtual, NEEDS_QEMU]

BOARDS = ("ro-1", "ro-2", "ro-3", "ro-4")
FAULTY = "ro-2"


@pytest.fixture(scope="module")
def fleet_of_four(hello_virt: Built, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    base = tmp_path_factory.mktemp("rollout-qemu")
    config = base / "faults.cfg"
    config.write_text(faults("write_aio", sector_in(hello_virt.disk, ROOT_B, 0.001)))
    try:
        for name in BOARDS:
            extra = ["--storage-faults", config] if name == FAULTY else []
            fleet("lab", "up", "--board", "qemu-virt-arm64", "--disk", hello_virt.disk,
                  "--name", name, *extra)
        inventory = base / "fleet.toml"
        fleet("lab", "inventory", "--out", inventory, "--prefix", "ro")
        yield inventory
    finally:
        for name in BOARDS:
            fleet("lab", "down", name, check=False)


def rollout(inventory: Path, release: Path, pub: Path, *args: str) -> tuple[dict, int]:  # type: ignore[type-arg]
    proc = fleet("rollout", release, "--inventory", inventory, "--trust", pub, "--json",
                 "--parallel", "2", *args, check=False, timeout=1200)
    assert proc.stdout, proc.stderr
    return json.loads(proc.stdout), proc.returncode


def test_the_budget_halts_the_rollout_and_leaves_the_rest_untouched(
    fleet_of_four: Path, hello_virt: Built, hello_v2_virt: Path
) -> None:
    report, code = rollout(fleet_of_four, hello_v2_virt, hello_virt.pub,
                           "--waves", "1,1,100%", "--max-failures", "0")
    assert code == 14 and report["state"] == "halted", report
    outcomes = {b["name"]: b for b in report["boards"]}
    assert outcomes["ro-1"]["outcome"] == "updated" and outcomes["ro-1"]["wave"] == 1
    assert outcomes[FAULTY]["outcome"] == "refused", outcomes[FAULTY]
    assert "writing /dev/vda6 failed" in outcomes[FAULTY]["reason"]
    assert {outcomes[n]["outcome"] for n in ("ro-3", "ro-4")} == {"not-started"}
    assert "failure budget spent: 1 of 2" in report["message"]

    now = {n: machine.board_status(resolve(n)) for n in BOARDS}
    assert now["ro-1"].running_slot == "B" and now["ro-1"].app_version == "2.0.0"
    assert now["ro-1"].committed
    for name in (FAULTY, "ro-3", "ro-4"):
        assert now[name].running_slot == "A" and now[name].committed, name
        assert now[name].app_version != "2.0.0" and now[name].slot("B") is None, name

    # The journal: the untouched boards were never even contacted.
    book = j.SqliteJournal(j.default_path(fleet_of_four))
    record = book.latest()
    assert record is not None and record.state == j.HALTED
    assert {b.name: b.state for b in book.boards(record.id)}["ro-3"] == j.PLANNED
    assert book.steps(record.id, "ro-3") == [] and book.steps(record.id, "ro-4") == []
    steps = [s.step for s in book.steps(record.id, "ro-1")]
    assert steps[0] == "connect" and "install rootfs" in steps and steps[-1] == "done"
    assert steps.index("try") < steps.index("trial") < steps.index("done")

    # fleet status over the inventory: every board in one table, in parallel.
    table = fleet("status", "--inventory", fleet_of_four, "--json")
    rows = {row["name"]: row for row in json.loads(table.stdout)}
    assert rows["ro-1"]["status"]["running_slot"] == "B"
    assert all(rows[n]["reachable"] for n in BOARDS)


def test_a_second_rollout_skips_the_updated_and_finishes_within_budget(
    fleet_of_four: Path, hello_virt: Built, hello_v2_virt: Path
) -> None:
    report, code = rollout(fleet_of_four, hello_v2_virt, hello_virt.pub,
                           "--waves", "2,100%", "--max-failures", "1")
    outcomes = {b["name"]: b["outcome"] for b in report["boards"]}
    assert outcomes == {"ro-1": "skipped", FAULTY: "refused", "ro-3": "updated",
                        "ro-4": "updated"}, report
    assert code == 13 and report["state"] == "completed"
    # Deltas against the boards' flashed 1.0.0: made once, the same bytes to each board.
    sent = {b["name"]: b["bytes_sent"] for b in report["boards"]}
    full = sum(p.size for p in load_manifest(hello_v2_virt).payloads)
    assert sent["ro-3"] == sent["ro-4"] and 0 < sent["ro-3"] < 0.03 * full, (sent, full)
    # The faulty board's boot payload went in as a delta before its rootfs write failed.
    methods = {b["name"]: b["method"] for b in report["boards"]}
    assert methods == {"ro-1": "", FAULTY: "delta", "ro-3": "delta", "ro-4": "delta"}, report
    history = fleet("rollout", "history", "--inventory", fleet_of_four)
    assert "halted" in history.stdout and "completed" in history.stdout
