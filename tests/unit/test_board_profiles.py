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
    # Issue 18: the Pi 4 and CM4 boot through Debian's U-Boot, like every Pi fleet builds.
    for name in ("rpi3b", "rpi4b", "cm4", "zero2w"):
        profile = get_profile(name, BOARDS)
        assert profile.boot_method == "uboot-ab", name
        assert profile.bootloader is not None and profile.bootloader.package == "u-boot-rpi"
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
    assert "boot_method: uboot-ab" in shown and "file: usr/lib/u-boot/rpi_arm64/u-boot.bin" in shown
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


def test_wifi_is_carried_by_default_only_where_the_board_needs_it(tmp_path: Path) -> None:
    """Issue 18, item 5: the Zero 2 W's images carry WiFi and its USB gadget; the other
    profiles only when the project asks, and a board without WiFi refuses the request."""
    from dataclasses import replace

    from fleet.errors import BuildError
    from fleet.image import wireless
    from fleet.project import load_project

    profiles = {p.name: p for p in all_profiles()}
    project = load_project(REPO / "examples" / "hello-c")
    carried = {n for n, p in profiles.items() if wireless.wifi_for(p, project)}
    assert carried == {"zero2w"}
    assert [n for n, p in profiles.items() if p.gadget] == ["zero2w"]
    asked = replace(project, wifi=True)
    assert wireless.packages(profiles["rpi4b"], asked) == ["wpasupplicant", "firmware-brcm80211"]
    assert wireless.modules(profiles["qemu-virt-arm64"], asked)[0] == "mac80211_hwsim"
    assert wireless.wifi_for(profiles["zero2w"], replace(project, wifi=False)) is None
    with pytest.raises(BuildError, match=r"board rpi5 has no WiFi, but fleet\.toml asks for it"):
        wireless.wifi_for(profiles["rpi5"], asked)
