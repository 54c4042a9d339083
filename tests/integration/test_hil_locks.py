"""Board locks between real processes: the holder is named, a killed holder leaves no
lock, two runs wanting the same boards in opposite orders both get them, and a
waiting run picks a board up once it is released."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet.hil.labfile import Lab, load_lab
from fleet.hil.locks import BoardBusy, acquire, acquire_many, holders, lock_path
from tests.conftest import REPO

pytestmark = pytest.mark.integration

LAB = """\
[lab]
name = "locks"
"""
BOARD = """
[[board]]
name = "{name}"
profile = "qemu-virt-arm64"
resources.virtual = {{ kind = "qemu" }}
drivers = {{ power = "virtual", console = "qemu", provision = "virtual-flash" }}
"""

# argv: lab file, wait, seconds to hold, rounds, board names...; with rounds > 1 it
# starts once the file "go" beside the lab file exists, so that two children race.
CHILD = """
import sys, time
from pathlib import Path
from fleet.hil.labfile import load_lab
from fleet.hil.locks import acquire_many
lab = load_lab(Path(sys.argv[1]))
wait, hold, rounds = float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
if rounds > 1:
    print("ready", flush=True)
    while not (lab.path.parent / "go").exists():
        time.sleep(0.002)
for _ in range(rounds):
    locks = acquire_many(lab, sys.argv[5:], wait)
    print("locked", flush=True)
    time.sleep(hold)
    for lock in locks:
        lock.release()
"""


@pytest.fixture
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lab]:
    monkeypatch.setenv("FLEET_HIL_LOCKS", str(tmp_path / "locks"))
    monkeypatch.setenv("FLEET_BOARDS_DIR", str(REPO / "boards"))
    path = tmp_path / "lab.toml"
    path.write_text(LAB + "".join(BOARD.format(name=n) for n in ("pi-a", "pi-b", "pi-c")))
    yield load_lab(path)


def _child(
    lab: Lab, *names: str, wait: float = 0, hold: float = 60, rounds: int = 1
) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    args = [str(lab.path), str(wait), str(hold), str(rounds), *names]
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, *args],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _locked(child: subprocess.Popen[str]) -> None:
    assert child.stdout is not None
    line = child.stdout.readline()
    if line != "locked\n":
        child.kill()
        _, err = child.communicate()
        pytest.fail(f"the child did not lock: {line!r} {err}")


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for child in started:
        if child.poll() is None:
            child.kill()
        child.communicate()


def test_a_second_process_is_told_which_pid_holds_the_board(
    lab: Lab, children: list[subprocess.Popen[str]]
) -> None:
    first = _child(lab, "pi-a")
    children.append(first)
    _locked(first)
    with pytest.raises(BoardBusy) as caught:
        acquire(lab, "pi-a")
    assert str(caught.value).startswith(
        f"board 'pi-a' of lab 'locks' is in use by pid {first.pid} ("
    )
    found = holders(lab)
    assert set(found) == {"pi-a", "pi-b", "pi-c"}
    holder = found["pi-a"]
    assert holder is not None and holder.pid == first.pid and "-c" in holder.command
    assert found["pi-b"] is None and found["pi-c"] is None
    # The probe did not disturb the holder: the board is still taken.
    with pytest.raises(BoardBusy):
        acquire(lab, "pi-a")
    with acquire(lab, "pi-b") as other:
        assert other.held and holders(lab)["pi-b"] == other.holder
    assert not other.held and holders(lab)["pi-b"] is None


def test_a_holder_killed_with_sigkill_leaves_no_lock(
    lab: Lab, children: list[subprocess.Popen[str]]
) -> None:
    child = _child(lab, "pi-a")
    children.append(child)
    _locked(child)
    assert f'"pid": {child.pid}' in lock_path(lab, "pi-a").read_text()
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=10)
    # The dead holder's note is still in the file, but nothing holds the lock.
    assert holders(lab)["pi-a"] is None
    assert lock_path(lab, "pi-a").read_text() == ""
    start = time.monotonic()
    with acquire(lab, "pi-a") as lock:
        assert time.monotonic() - start < 0.5
        assert holders(lab)["pi-a"] == lock.holder and lock.holder.pid == os.getpid()


def test_acquire_many_in_opposite_orders_never_deadlocks(
    lab: Lab, children: list[subprocess.Popen[str]]
) -> None:
    one = _child(lab, "pi-a", "pi-b", "pi-c", wait=20, hold=0.01, rounds=20)
    two = _child(lab, "pi-c", "pi-b", "pi-a", wait=20, hold=0.01, rounds=20)
    children += [one, two]
    for child in (one, two):
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
    (lab.path.parent / "go").touch()
    for child in (one, two):
        _, err = child.communicate(timeout=60)
        assert child.returncode == 0, err
    assert set(holders(lab).values()) == {None}


def test_acquire_many_releases_what_it_took_when_one_is_busy(
    lab: Lab, children: list[subprocess.Popen[str]]
) -> None:
    child = _child(lab, "pi-b")
    children.append(child)
    _locked(child)
    with pytest.raises(BoardBusy, match=f"'pi-b' .* pid {child.pid} "):
        acquire_many(lab, ["pi-c", "pi-b", "pi-a"])
    found = holders(lab)
    assert found["pi-a"] is None and found["pi-c"] is None
    assert found["pi-b"] is not None and found["pi-b"].pid == child.pid


def test_waiting_picks_the_board_up_once_released(
    lab: Lab, children: list[subprocess.Popen[str]]
) -> None:
    child = _child(lab, "pi-a", hold=1.5)
    children.append(child)
    _locked(child)
    start = time.monotonic()
    with pytest.raises(BoardBusy, match=r"\(waited 0\.4 s\)$"):
        acquire(lab, "pi-a", wait=0.4)
    assert 0.4 <= time.monotonic() - start < 1.4
    with acquire(lab, "pi-a", wait=20) as lock:
        waited = time.monotonic() - start
        assert lock.held and 1.0 < waited < 10
    child.communicate(timeout=10)
    assert child.returncode == 0


def test_a_program_started_by_the_holder_does_not_keep_the_lock(
    lab: Lab, children: list[subprocess.Popen[str]]
) -> None:
    lock = acquire(lab, "pi-a")
    sleeper = subprocess.Popen(["sleep", "60"], close_fds=False)
    try:
        lock.release()
        lock.release()  # twice is harmless
        assert holders(lab)["pi-a"] is None
        child = _child(lab, "pi-a")
        children.append(child)
        _locked(child)
    finally:
        sleeper.kill()
        sleeper.wait()
