"""Every command teaches itself: --help works for each, the top level lists them all,
and a mistyped command is a usage error (exit 2), not a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fleet import __version__
from fleet.cli.main import COMMANDS

pytestmark = pytest.mark.integration

FLEET = str(Path(sys.executable).parent / "fleet")


def fleet(*args: str) -> subprocess.CompletedProcess[str]:
    env = {"COLUMNS": "100", "PATH": "/usr/bin:/bin", "TERM": "dumb"}
    return subprocess.run([FLEET, *args], capture_output=True, text=True, env=env, timeout=60)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_each_command_has_help(command: str) -> None:
    result = fleet(command, "--help")
    assert result.returncode == 0, result.stderr
    assert f"Usage: fleet {command}" in result.stdout
    assert "Traceback" not in result.stderr


def test_top_level_help_lists_every_command() -> None:
    result = fleet("--help")
    assert result.returncode == 0, result.stderr
    for command in COMMANDS:
        assert f" {command} " in result.stdout, command


def test_version() -> None:
    result = fleet("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"fleet {__version__}"


def test_unknown_command_is_a_usage_error() -> None:
    result = fleet("flsah", "x.img")
    assert result.returncode == 2
    assert "flsah" in result.stderr and "Traceback" not in result.stderr
