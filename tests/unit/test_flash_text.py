"""Text from outside fleet (USB descriptor strings, mount points, file names, what a
board answers) is shown as the text it is: never read as rich markup or emoji codes.
The disks come from the udev stand-in (tests/unit/udev_standin.py), classified by
fleet's own code."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner
from udev_standin import Udev, udev

import fleet.cli.flash as flash_cli
from fleet.cli import output
from fleet.cli.main import register
from fleet.errors import FleetError

pytestmark = pytest.mark.unit
__all__ = ["udev"]

HOSTILE = "[/]"  # closes a tag that was never opened: rich raises MarkupError
RESTYLE = "[green]calm[/green]"  # would quietly restyle the text around it


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "disk.img"
    path.write_bytes(b"\0" * 4096)
    return path


def run(args: list[str], monkeypatch: pytest.MonkeyPatch, typed: str = "") -> tuple[int, str]:
    monkeypatch.setattr(flash_cli, "_interactive", lambda: True)
    result = CliRunner().invoke(register(["flash", "devices"]), args, input=typed)
    if isinstance(result.exception, FleetError):
        return result.exception.exit_code, result.output + f"fleet: error: {result.exception}"
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    return result.exit_code, result.output


def test_candidate_list_shows_descriptor_strings_as_they_are(
    image: Path, udev: Udev, monkeypatch: pytest.MonkeyPatch
) -> None:
    udev.usb_reader("sdx", vendor="Generic", model=HOSTILE)
    udev.usb_reader("sdy", vendor=RESTYLE, model=":thumbs_up:")
    code, said = run(["flash", str(image)], monkeypatch, typed="3\n")
    assert code == 2, said
    assert f"1) /dev/sdx (Generic {HOSTILE}, 32.0 GiB, usb)" in said
    assert f"2) /dev/sdy ({RESTYLE} :thumbs_up:, 32.0 GiB, usb)" in said


def test_devices_list_shows_descriptor_strings_as_they_are(
    udev: Udev, monkeypatch: pytest.MonkeyPatch
) -> None:
    udev.usb_reader("sdx", vendor=RESTYLE, model=HOSTILE, serial="[bold]S1:smile:")
    code, said = run(["devices"], monkeypatch)
    assert code == 0, said
    assert f"{RESTYLE} {HOSTILE}" in said and "[bold]S1:smile:" in said


def test_system_drive_warning_cannot_be_restyled_by_the_model_string(
    image: Path, udev: Udev, monkeypatch: pytest.MonkeyPatch
) -> None:
    udev.sata("sda", vendor="ATA", model=f"[/bold red]{RESTYLE}")
    code, said = run(["flash", str(image), "-d", "/dev/sda", "--allow-system-drive"],
                     monkeypatch, typed="nope\n")
    assert code == 6, said
    assert f"/dev/sda (ATA [/bold red]{RESTYLE}, 256.0 GiB, ata) is a SYSTEM drive" in said
    assert "confirmation did not match; /dev/sda was not changed" in said


def test_notes_are_plain_text(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """What a board in boot-ROM mode asks for reaches the screen through note()."""
    monkeypatch.setattr(output, "err", output.LazyConsole(stderr=True))
    output.note(f"board asked for {HOSTILE}start4.elf :smile: {RESTYLE}")
    assert capsys.readouterr().err == f"board asked for {HOSTILE}start4.elf :smile: {RESTYLE}\n"
