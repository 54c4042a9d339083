"""Which device `fleet flash` picks when none is named. No machine here has a USB card
reader, so the device list is the edge replaced: two readers as udev would describe
them; the command's own choosing and refusing code runs as it does at a desk."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

import fleet.cli.flash as flash_cli
from fleet.cli.main import register
from fleet.errors import FleetError
from fleet.flash.discovery import BlockDevice

pytestmark = pytest.mark.unit

GiB = 1024**3


def reader(name: str, serial: str) -> BlockDevice:
    return BlockDevice(
        name=name, node=f"/dev/{name}", devnum="8:16", kind="disk", size=32 * GiB,
        bus="usb", vendor="Generic", model="SD Reader", serial=serial,
        removable=True, hotplug=True, read_only=False,
    )


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "disk.img"
    path.write_bytes(b"\0" * 4096)
    return path


def run(image: Path, devices: list[BlockDevice], monkeypatch: pytest.MonkeyPatch,
        terminal: bool, typed: str = "") -> tuple[int, str]:
    monkeypatch.setattr(flash_cli, "list_block_devices", lambda: devices)
    monkeypatch.setattr(flash_cli, "_interactive", lambda: terminal)
    result = CliRunner().invoke(register(["flash"]), ["flash", str(image), "--yes"],
                                input=typed)
    # fleet's top-level handler (not run by CliRunner) turns these into exit codes
    if isinstance(result.exception, FleetError):
        return result.exception.exit_code, result.output + str(result.exception)
    return result.exit_code, result.output


def test_several_candidates_without_a_terminal_are_refused(
    image: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, said = run(image, [reader("sdx", "A1"), reader("sdy", "B2")], monkeypatch, False)
    assert code == 6
    assert "several devices could be the target (/dev/sdx, /dev/sdy)" in said
    assert "pick one with --device" in said


def test_several_candidates_on_a_terminal_are_listed_and_a_wrong_pick_is_refused(
    image: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    devices = [reader("sdx", "A1"), reader("sdy", "B2")]
    code, said = run(image, devices, monkeypatch, True, typed="3\n")
    assert code == 2
    assert "1) /dev/sdx (Generic SD Reader, 32.0 GiB, usb)" in said
    assert "2) /dev/sdy" in said
    assert "no device number 3" in said


def test_nothing_to_flash_says_how_to_go_on(image: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code, said = run(image, [], monkeypatch, False)
    assert code == 6
    assert "no flashable device found" in said and "--wait" in said
