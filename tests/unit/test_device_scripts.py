"""The files that run on the board carry no switch a test (or an attacker who can set
the environment) could use to point them elsewhere (issue 10, item 7)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

DEVICE = Path(__file__).resolve().parents[2] / "fleet" / "device"
SCRIPTS = sorted(
    p for p in DEVICE.iterdir()
    if p.is_file() and p.read_bytes().startswith(b"#!") and p.suffix not in (".c", ".cmd")
)


def test_there_are_scripts_to_check() -> None:
    names = {p.name for p in SCRIPTS}
    assert {"agent", "agent-ssh", "health-watch", "rc.sysinit", "initramfs-init"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_no_path_or_program_comes_from_the_environment(script: Path) -> None:
    text = script.read_text()
    # ${FLEET_SOMETHING:-default} is how the old agent let tests move its folders (and
    # FLEET_FIRMWARE skipped the block-device check): values of board.env and app.env
    # are set by the image itself, never defaulted from the caller's environment.
    overrides = re.findall(r"\$\{(FLEET_[A-Z_]+):-", text)
    allowed = {"FLEET_HEALTH_MAX_EXITS", "FLEET_HEALTH_CHECK_TIMEOUT", "FLEET_SHELL_KEYS"}
    assert set(overrides) <= allowed, overrides
    assert "FLEET_REBOOT" not in text and "FLEET_PATH" not in text
