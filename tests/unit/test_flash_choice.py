"""Which device `fleet flash` picks when none is named, and that --yes never picks one.
No machine here has a USB card reader or an eMMC, so udev's device list is the edge
replaced (tests/unit/udev_standin.py); fleet's classification of each disk and the
command's own choosing and refusing code run as they do at a desk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner
from udev_standin import Udev, udev

import fleet.cli.flash as flash_cli
from fleet.cli.main import register
from fleet.errors import FleetError

pytestmark = pytest.mark.unit
__all__ = ["udev"]  # the fixture, used by name

YES_NEEDS_DEVICE = "fleet: error: --yes writes without asking, so it needs --device"


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "disk.img"
    path.write_bytes(b"\0" * 4096)
    return path


def run(args: list[str], monkeypatch: pytest.MonkeyPatch, terminal: bool,
        typed: str = "") -> tuple[int, str]:
    monkeypatch.setattr(flash_cli, "_interactive", lambda: terminal)
    result = CliRunner().invoke(register(["flash", "devices"]), args, input=typed)
    # fleet's top-level handler (not run by CliRunner) turns these into exit codes
    if isinstance(result.exception, FleetError):
        return result.exception.exit_code, result.output + f"fleet: error: {result.exception}"
    return result.exit_code, result.output


def test_several_candidates_without_a_terminal_are_refused(
    image: Path, udev: Udev, monkeypatch: pytest.MonkeyPatch
) -> None:
    udev.usb_reader("sdx", serial="A1")
    udev.usb_reader("sdy", serial="B2")
    code, said = run(["flash", str(image)], monkeypatch, False)
    assert code == 6
    assert "several devices could be the target (/dev/sdx, /dev/sdy)" in said
    assert "pick one with --device" in said


def test_several_candidates_on_a_terminal_are_listed_and_a_wrong_pick_is_refused(
    image: Path, udev: Udev, monkeypatch: pytest.MonkeyPatch
) -> None:
    udev.usb_reader("sdx", serial="A1")
    udev.usb_reader("sdy", serial="B2")
    code, said = run(["flash", str(image)], monkeypatch, True, typed="3\n")
    assert code == 2
    assert "1) /dev/sdx (Generic SD Reader, 32.0 GiB, usb)" in said
    assert "2) /dev/sdy" in said
    assert "no device number 3" in said


def test_nothing_to_flash_says_how_to_go_on(
    image: Path, udev: Udev, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, said = run(["flash", str(image)], monkeypatch, False)
    assert code == 6
    assert "no flashable device found" in said and "--wait" in said


@pytest.mark.parametrize("how", [[], ["--wait", "--timeout", "1"], ["--usb-serial", "A1"]])
def test_yes_without_device_is_refused_even_with_one_candidate(
    image: Path, udev: Udev, monkeypatch: pytest.MonkeyPatch, how: list[str]
) -> None:
    udev.usb_reader("sdx", serial="A1")
    code, said = run(["flash", str(image), "--yes", *how], monkeypatch, True)
    assert code == 2
    last = said.strip().splitlines()[-1]
    assert last.startswith(YES_NEEDS_DEVICE), said
    assert "/dev/sdx" not in said


def test_mmc_card_the_kernel_calls_not_removable_is_never_offered(
    image: Path, udev: Udev, monkeypatch: pytest.MonkeyPatch
) -> None:
    udev.mmc("mmcblk0", kind="MMC")
    udev.mmc("mmcblk1", kind="SD")
    code, said = run(["flash", str(image)], monkeypatch, True)
    assert code == 6
    assert "no flashable device found" in said and "mmcblk" not in said
    # With a card reader beside it, the reader is the only candidate: asked, then declined.
    udev.usb_reader("sdx")
    code, said = run(["flash", str(image)], monkeypatch, True, typed="n\n")
    assert code == 6
    assert "Write disk.img to /dev/sdx (Generic SD Reader" in said and "mmcblk" not in said
    code, listed = run(["devices", "--json"], monkeypatch, False)
    assert code == 0
    assert [d["node"] for d in json.loads(listed)["disks"]] == ["/dev/sdx"]
    code, listed = run(["devices", "--all", "--json"], monkeypatch, False)
    shown = {d["node"]: d for d in json.loads(listed)["disks"]}
    assert shown["/dev/mmcblk0"]["system"] is True and shown["/dev/mmcblk0"]["offered"] is False
    assert "not removable" in shown["/dev/mmcblk1"]["system_reason"]
