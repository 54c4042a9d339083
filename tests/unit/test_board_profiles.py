"""Board profiles load from boards/*.toml; a wrong or missing field names file and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet.boards import all_profiles, get_profile, load_profile
from fleet.errors import ConfigError
from tests.conftest import REPO, fleet

pytestmark = pytest.mark.unit

BOARDS = REPO / "boards"


def test_the_six_profiles_load() -> None:
    names = [p.name for p in all_profiles(BOARDS)]
    assert names == ["cm4", "qemu-virt-arm64", "rpi3b", "rpi4b", "rpi5", "zero2w"]
    virt = get_profile("qemu-virt-arm64", BOARDS)
    assert virt.arch == "aarch64" and virt.boot_method == "uboot-ab" and virt.virtual
    assert virt.qemu is not None and virt.qemu.machine == "virt"
    assert get_profile("rpi4b", BOARDS).boot_method == "rpi-tryboot"
    assert get_profile("cm4", BOARDS).usb_ids == ("0a5c:2711",)


def _broken(tmp_path: Path, old: str, new: str) -> Path:
    folder = tmp_path / "boards"
    folder.mkdir()
    source = (BOARDS / "rpi3b.toml").read_text()
    assert old in source
    (folder / "rpi3b.toml").write_text(source.replace(old, new, 1))
    return folder / "rpi3b.toml"


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('arch = "aarch64"', 'arch = "x86"',
         "field 'arch': expected one of aarch64, armhf, got 'x86'"),
        ('method = "uboot-ab"\n', "", "field 'boot.method': missing"),
        ("baud = 115200", 'baud = "fast"', "field 'boot.baud': expected an integer"),
        ("data_mib = 64", "data_mib = 2", "field 'storage.data_mib': must be at least 8"),
        ("[network]", "colour = 3\n[network]", "field 'storage.colour': unknown field"),
        ('name = "rpi3b"', 'name = "rpi9"', "field 'name': must match the file name"),
        ("[qemu]\n", "[qemu]\nloader = 1\n", "not valid TOML"),
    ],
)
def test_a_broken_profile_names_file_and_field(
    tmp_path: Path, old: str, new: str, message: str
) -> None:
    path = _broken(tmp_path, old, new)
    with pytest.raises(ConfigError) as caught:
        load_profile(path)
    assert "rpi3b.toml" in str(caught.value)
    assert message in str(caught.value)


def test_cli_lists_and_shows_profiles(tmp_path: Path) -> None:
    listing = fleet("boards").stdout
    for name in ("qemu-virt-arm64", "rpi3b", "rpi4b", "rpi5", "cm4", "zero2w"):
        assert name in listing
    shown = fleet("boards", "show", "rpi4b").stdout
    assert "boot_method: rpi-tryboot" in shown
    unknown = fleet("boards", "show", "nope", check=False)
    assert unknown.returncode == 2
    assert unknown.stderr.strip().startswith("fleet: error: unknown board 'nope'")
    broken = _broken(tmp_path, 'arch = "aarch64"', 'arch = "mips"')
    bad = fleet("boards", check=False, env={"FLEET_BOARDS_DIR": str(broken.parent)})
    assert bad.returncode == 2
    assert "rpi3b.toml: field 'arch'" in bad.stderr


def test_rpi5_is_marked_unsupported_with_the_reason() -> None:
    """Issue 18, item 4: nothing in Debian 12 boots a Pi 5; the profile says so."""
    profiles = {p.name: p for p in all_profiles()}
    assert "BCM2712" in (profiles["rpi5"].unsupported or "")
    assert [n for n, p in profiles.items() if p.unsupported] == ["rpi5"]
