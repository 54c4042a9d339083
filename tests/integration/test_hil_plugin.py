"""The pytest plugin's choice of boards, seen in what pytest collects (no board booted):
a test per board, markers by profile and feature, several boards at once, and skips with
their reason where no board matches."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration

LAB = """
[lab]
name = "plug"

[[board]]
name = "q1"
profile = "qemu-virt-arm64"
features = ["app-http"]
[board.resources]
virtual = { kind = "qemu" }
[board.drivers]
power = "virtual"
console = "qemu"
provision = "virtual-flash"

[[board]]
name = "q2"
profile = "qemu-virt-arm64"
features = ["app-http", "wifi"]
[board.resources]
virtual = { kind = "qemu" }
[board.drivers]
power = "virtual"
console = "qemu"
provision = "virtual-flash"

[[board]]
name = "pi"
profile = "rpi4b"
features = []
[board.resources]
network = { address = "192.0.2.30" }
[board.drivers]
power = "manual"
console = "none"
provision = "update"
"""

SUITE = '''
import pytest

def test_every_board(hil_board):
    pass

@pytest.mark.profile("rpi4b")
def test_pi_only(ssh):
    pass

@pytest.mark.feature("wifi")
def test_wifi(power):
    pass

@pytest.mark.boards(2)
@pytest.mark.feature("app-http")
def test_two_at_once(hil_boards):
    pass

@pytest.mark.boards(3)
@pytest.mark.feature("app-http")
def test_three_at_once(hil_boards):
    pass

@pytest.mark.profile("rpi5")
def test_no_such_board(console):
    pass

def test_no_board_needed():
    pass
'''


def collect(tmp_path: Path, *args: str) -> list[str]:
    (tmp_path / "lab.toml").write_text(LAB)
    (tmp_path / "suite").mkdir(exist_ok=True)
    (tmp_path / "suite/test_pick.py").write_text(SUITE)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", str(tmp_path / "suite"),
         "--lab", str(tmp_path / "lab.toml"), "--collect-only", "-q", "-c", "/dev/null",
         "--rootdir", str(tmp_path / "suite"), "-p", "no:cacheprovider", *args],
        capture_output=True, text=True, check=False, cwd=REPO,
        env={"FLEET_HIL_LOCKS": str(tmp_path / "locks"), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return [line.split("::", 1)[1] for line in proc.stdout.splitlines() if "::" in line]


def test_tests_are_made_per_board_and_narrowed_by_markers(tmp_path: Path) -> None:
    assert collect(tmp_path) == [
        "test_every_board[q1]", "test_every_board[q2]", "test_every_board[pi]",
        "test_pi_only[pi]",
        "test_wifi[q2]",
        "test_two_at_once[q1+q2]",
        "test_three_at_once[too-few-boards]",
        "test_no_such_board[none]",
        "test_no_board_needed",
    ]


def test_board_narrows_the_run(tmp_path: Path) -> None:
    assert collect(tmp_path, "--board", "q2") == [
        "test_every_board[q2]",
        "test_pi_only[none]",
        "test_wifi[q2]",
        "test_two_at_once[too-few-boards]",
        "test_three_at_once[too-few-boards]",
        "test_no_such_board[none]",
        "test_no_board_needed",
    ]
