"""Rollouts over simulated boards (real dropbear, the board's own agent and health
watcher, the boot script's rules; docs/lab.md): the fleet-wide budget, pause, continue and
abort from another terminal, resume after SIGKILL at several points, unreachable and
changed-host-key boards, skips and up-front refusals, Ansible inventories."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fleet.lab import state
from fleet.lab.simrelease import make_release
from fleet.update import journal as j
from tests.conftest import fleet

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="simulated boards need root"),
]


_SERIAL = itertools.count(1)


@dataclass(frozen=True)
class Keys:
    sec: Path
    pub: Path


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    folder = tmp_path_factory.mktemp("rollout-keys")
    fleet("keys", "generate", "--out", folder, "--name", "release")
    return Keys(folder / "release.sec", folder / "release.pub")


@dataclass(frozen=True)
class Fleet:
    prefix: str
    names: list[str]
    inventory: Path

    @property
    def journal(self) -> Path:
        return j.default_path(self.inventory)

    def tree(self, name: str) -> Path:
        return state.lab_root() / name / "tree"

    def agent_log(self, name: str) -> str:
        path = self.tree(name) / "data/fleet/agent.log"
        return path.read_text() if path.exists() else ""


@pytest.fixture()
def sims(keys: Keys, tmp_path: Path) -> Iterator[Callable[..., Fleet]]:
    made: list[str] = []

    def make(count: int, *, faults: dict[int, str] | None = None) -> Fleet:
        prefix = f"r{next(_SERIAL)}"
        fleet("lab", "up", "--sim", "--count", count, "--name", prefix, "--trust", keys.pub)
        names = [f"{prefix}-{n}" for n in range(1, count + 1)]
        made.extend(names)
        for number, fault in (faults or {}).items():
            fleet("lab", "sim-fault", names[number - 1], fault)
        inventory = tmp_path / f"{prefix}.toml"
        fleet("lab", "inventory", "--out", inventory, "--prefix", prefix)
        return Fleet(prefix, names, inventory)

    yield make
    for name in made:
        fleet("lab", "down", name, "--rm", check=False)
    # Nothing of these boards is left: no supervisor, no mount, no loop device.
    root = str(state.lab_root())
    wait_for(lambda: not any(root in line for line in _processes("fleet.lab.simboot")), 10)
    assert root not in Path("/proc/mounts").read_text()
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    assert root not in loops


def _processes(marker: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                line = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if marker in line:
                found.append(line)
    return found


@pytest.fixture(scope="module")
def releases(keys: Keys, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("sim-releases")
    return {
        "r2": make_release(base / "r2", keys.sec, 2),
        # Big enough that its stream lasts a while: a kill lands in the middle of it.
        "big": make_release(base / "big", keys.sec, 5, size=48 << 20),
    }


def rollout(f: Fleet, release: Path, keys: Keys, *args: str | Path) -> tuple[dict, int]:  # type: ignore[type-arg]
    proc = fleet("rollout", release, "--inventory", f.inventory, "--trust", keys.pub, "--json",
                 *args, check=False, timeout=300)
    assert proc.stdout, proc.stderr
    return json.loads(proc.stdout), proc.returncode


def start(f: Fleet, *args: str | Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "fleet.cli.main", "rollout", *map(str, args),
         "--inventory", str(f.inventory), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def wait_for(what: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def latest_state(f: Fleet) -> str:
    """The journal's last rollout's state, "" before there is one."""
    if not f.journal.exists():
        return ""
    record = j.SqliteJournal(f.journal).latest()
    return record.state if record else ""


def board_rows(f: Fleet) -> dict[str, j.BoardRecord]:
    if not f.journal.exists():
        return {}
    book = j.SqliteJournal(f.journal)
    record = book.latest()
    return {} if record is None else {b.name: b for b in book.boards(record.id)}


def statuses(f: Fleet) -> dict[str, dict]:  # type: ignore[type-arg]
    proc = fleet("status", "--inventory", f.inventory, "--json", check=False)
    return {row["name"]: row for row in json.loads(proc.stdout)}


def test_the_budget_halts_and_boards_not_started_stay_untouched(
    sims: Callable[..., Fleet], releases: dict[str, Path], keys: Keys
) -> None:
    f = sims(6, faults={3: "unhealthy"})
    report, code = rollout(f, releases["r2"], keys, "--waves", "1,2,100%", "--parallel", "3")
    assert code == 14 and report["state"] == "halted", report
    outcomes = {b["name"]: (b["wave"], b["outcome"], b["reason"]) for b in report["boards"]}
    n = f.names
    assert outcomes[n[0]] == (1, "updated", "")
    assert outcomes[n[1]] == (2, "updated", "")
    assert outcomes[n[2]] == (2, "rolled-back", "health failed")
    assert all(outcomes[x] == (3, "not-started", "") for x in n[3:])
    # A simulated board has no delta applier: its payloads go whole.
    methods = [b["method"] for b in report["boards"]]
    assert methods == ["full", "full", "full", "", "", ""], report
    now = statuses(f)
    assert [now[x]["status"]["running_slot"] for x in n] == ["B", "B", "A", "A", "A", "A"]
    for untouched in n[3:]:
        assert now[untouched]["status"]["slots"]["B"] is None
        assert f.agent_log(untouched) == ""  # not one agent command ran there
    book = j.SqliteJournal(f.journal)
    record = book.latest()
    assert record is not None and record.state == j.HALTED
    assert all(book.steps(record.id, x) == [] for x in n[3:])
    history = fleet("rollout", "history", "--inventory", f.inventory).stdout
    assert f"{record.id}: halted, release 2" in history and "not-started 3" in history


def test_a_percentage_budget_counts_only_after_the_minimum_has_finished(
    sims: Callable[..., Fleet], releases: dict[str, Path], keys: Keys
) -> None:
    f = sims(6, faults={2: "unhealthy", 3: "unhealthy"})
    report, code = rollout(f, releases["r2"], keys, "--waves", "1", "--parallel", "1",
                           "--max-failures", "30%", "--min-finished", "4")
    outcomes = [b["outcome"] for b in report["boards"]]
    # 2 of 2 and 2 of 3 failed, but the budget is judged only from 4 finished: 2 of 4 = 50%.
    assert outcomes == ["updated", "rolled-back", "rolled-back", "updated", "not-started",
                        "not-started"], report
    assert code == 14 and "2 of 4 finished board(s) failed" in report["message"]


def test_pause_between_waves_continue_and_a_second_controller_refused(
    sims: Callable[..., Fleet], releases: dict[str, Path], keys: Keys
) -> None:
    f = sims(3)
    proc = start(f, releases["r2"], "--trust", keys.pub, "--waves", "1,100%", "--pause-between")
    try:
        wait_for(lambda: latest_state(f) == j.PAUSED)
        rows = board_rows(f)
        assert rows[f.names[0]].outcome == "updated"
        assert rows[f.names[1]].state == rows[f.names[2]].state == j.PLANNED
        second = fleet("rollout", releases["r2"], "--inventory", f.inventory, "--trust",
                       keys.pub, check=False)
        assert second.returncode == 2 and "another controller" in second.stderr
        time.sleep(0.5)  # paused means paused: nothing starts
        assert board_rows(f)[f.names[1]].state == j.PLANNED
        fleet("rollout", "continue", "--inventory", f.inventory)
        out, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    assert [b["outcome"] for b in json.loads(out)["boards"]] == ["updated"] * 3


def test_pause_and_abort_from_another_terminal(
    sims: Callable[..., Fleet], releases: dict[str, Path], keys: Keys
) -> None:
    # Six boards one at a time: the requests land while most are still to go.
    f = sims(6)
    proc = start(f, releases["r2"], "--trust", keys.pub, "--waves", "1", "--parallel", "1")
    try:
        wait_for(lambda: any(b.outcome for b in board_rows(f).values()))
        fleet("rollout", "pause", "--inventory", f.inventory)
        wait_for(lambda: latest_state(f) == j.PAUSED)
        fleet("rollout", "abort", "--inventory", f.inventory)
        out, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 15, out
    report = json.loads(out)
    outcomes = [b["outcome"] for b in report["boards"]]
    assert report["state"] == "aborted" and outcomes[-1] == "not-started", report
    assert set(outcomes) <= {"updated", "not-started"} and outcomes[0] == "updated"
    nothing = fleet("rollout", "pause", "--inventory", f.inventory, check=False)
    assert nothing.returncode == 2 and "no rollout is running" in nothing.stderr


def _killed_at(f: Fleet, point: str, name: str, proc: subprocess.Popen[str]) -> None:
    def step_is(step: str) -> bool:
        rows = board_rows(f)
        return name in rows and rows[name].state == step

    if point == "before-wave":
        wait_for(lambda: latest_state(f) == j.PAUSED)
    elif point == "mid-stream":
        wait_for(lambda: step_is("install rootfs"))
    elif point == "trial":
        wait_for(lambda: step_is("try"))
    elif point == "commit":
        # Stopped as the trial starts, killed once the board has committed on its own.
        wait_for(lambda: step_is("trial"))
        os.kill(proc.pid, signal.SIGSTOP)
        wait_for(lambda: "commit: slot B" in f.agent_log(name))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.parametrize("point", ["before-wave", "mid-stream", "trial", "commit"])
def test_resume_after_sigkill(
    point: str, sims: Callable[..., Fleet], releases: dict[str, Path], keys: Keys
) -> None:
    f = sims(3)
    release = releases["big"] if point == "mid-stream" else releases["r2"]
    extra = ["--pause-between"] if point == "before-wave" else []
    proc = start(f, release, "--trust", keys.pub, "--waves", "1,100%", *extra)
    _killed_at(f, point, f.names[0], proc)
    book = j.SqliteJournal(f.journal)
    record = book.latest()
    assert record is not None and record.state in (j.RUNNING, j.PAUSED)
    if point == "before-wave":
        resumed = start(f, "--resume", "--trust", keys.pub)
        wait_for(lambda: j.SqliteJournal(f.journal).controller_alive())
        fleet("rollout", "continue", "--inventory", f.inventory)
        out, err = resumed.communicate(timeout=200)
        code = resumed.returncode
    else:
        proc2 = fleet("rollout", "--resume", "--inventory", f.inventory, "--trust", keys.pub,
                      "--json", check=False, timeout=200)
        out, err, code = proc2.stdout, proc2.stderr, proc2.returncode
    assert code == 0, err
    report = json.loads(out)
    assert [b["outcome"] for b in report["boards"]] == ["updated"] * 3, report
    now = statuses(f)
    for name in f.names:
        board = now[name]["status"]
        assert board["running_slot"] == "B" and board["health"] == "healthy", board
        # Never tried twice: one trial per board, whatever the controller went through.
        assert f.agent_log(name).count("try: slot B") == 1, f.agent_log(name)
    steps = [s.step for s in book.steps(record.id, f.names[0])]
    if point in ("trial", "commit"):
        assert "settle" in steps  # judged by its own boot state, not updated again
    if point == "mid-stream":
        assert steps.count("install rootfs") == 2  # the cut stream started over
    final = book.get(record.id)
    assert final.state == j.COMPLETED


def test_unreachable_retried_changed_host_key_not(
    sims: Callable[..., Fleet], releases: dict[str, Path], keys: Keys
) -> None:
    f = sims(3)
    fleet("lab", "power", f.names[1], "off")
    # Another key pinned for the third board: it presents one the host does not expect.
    impostor = state.lab_root() / "impostor_known_hosts"
    text = f.inventory.read_text()
    lab_known = state.lab_root() / "known_hosts"
    port = state.load(f.names[2]).ssh_port
    lines = [x for x in lab_known.read_text().splitlines() if f"]:{port} " not in x]
    impostor.write_text("\n".join(lines) + f"\n[127.0.0.1]:{port} ssh-ed25519 "
                        "AAAAC3NzaC1lZDI1NTE5AAAAIHJyXwSYmf3wFGlTq6m4+8B0N9jyg7lj1b7AqVAmwf4n\n")
    blocks = text.split("[[boards]]")
    blocks[3] = blocks[3].replace(str(lab_known), str(impostor))
    f.inventory.write_text("[[boards]]".join(blocks))
    report, code = rollout(f, releases["r2"], keys, "--waves", "100%", "--retries", "2",
                           "--backoff", "0.2", "--max-failures", "5", "--connect-timeout", "2")
    rows = {b["name"]: b for b in report["boards"]}
    assert code == 13 and rows[f.names[0]]["outcome"] == "updated", report
    down = rows[f.names[1]]
    assert down["outcome"] == "unreachable" and down["attempts"] == 3, down
    changed = rows[f.names[2]]
    assert changed["outcome"] == "unreachable" and changed["reason"] == "host key changed"
    assert changed["attempts"] == 1 and "CHANGED" in changed["detail"]
    book = j.SqliteJournal(f.journal)
    record = book.latest()
    assert record is not None
    assert [s.step for s in book.steps(record.id, f.names[1])].count("retry") == 2
    assert "retry" not in [s.step for s in book.steps(record.id, f.names[2])]


def test_skips_refusals_up_front_and_an_ansible_inventory(
    sims: Callable[..., Fleet], releases: dict[str, Path], keys: Keys, tmp_path: Path
) -> None:
    f = sims(3)
    fleet("update", f.names[0], releases["r2"], "--trust", keys.pub)
    lab = state.lab_root()
    ini = tmp_path / "hosts"
    lines = ["[lab]"]
    for number, name in enumerate(f.names):
        profile = "rpi4b" if number == 2 else "qemu-virt-arm64"
        lines.append(
            f"{name} ansible_host=127.0.0.1 ansible_port={state.load(name).ssh_port} "
            f"ansible_user=root ansible_ssh_private_key_file={lab / 'id_ed25519'} "
            f"fleet_known_hosts={lab / 'known_hosts'} fleet_profile={profile}"
        )
    ini.write_text("\n".join(lines) + "\n")
    proc = fleet("rollout", releases["r2"], "--inventory", ini, "--trust", keys.pub, "--json",
                 "--max-failures", "1", check=False)
    report = json.loads(proc.stdout)
    rows = {b["name"]: b for b in report["boards"]}
    assert rows[f.names[0]]["outcome"] == "skipped"
    assert rows[f.names[1]]["outcome"] == "updated"
    refused = rows[f.names[2]]
    assert refused["outcome"] == "refused" and refused["wave"] == 0
    assert "profile 'rpi4b'" in refused["reason"]
    assert proc.returncode == 13
    assert f.agent_log(f.names[2]) == ""  # refused before any contact
    table = fleet("status", "--inventory", ini).stdout
    assert all(name in table for name in f.names)
