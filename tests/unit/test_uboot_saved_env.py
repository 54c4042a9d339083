"""The U-Boot environment file a Pi 3 image carries on partition 1: U-Boot's own layout
(CRC32, NUL-ended pairs, padded to CONFIG_ENV_SIZE), booting fleet's script directly and
leaving out the default `preboot=usb start` (which hides usb-net from Linux on QEMU)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest

from fleet.boards import get_profile, load_profile
from fleet.errors import ConfigError
from fleet.image.bootscript import uboot_saved_env
from tests.conftest import REPO

pytestmark = pytest.mark.unit

BOARDS = REPO / "boards"


def test_rpi3b_env_file_is_u_boot_layout_and_runs_boot_scr() -> None:
    data = uboot_saved_env(get_profile("rpi3b", BOARDS))
    assert len(data) == 0x4000
    (crc,) = struct.unpack("<I", data[:4])
    assert zlib.crc32(data[4:]) == crc
    pairs = data[4:].rstrip(b"\0").split(b"\0")
    env = dict(p.decode().split("=", 1) for p in pairs)
    # devtype and devnum name the disk to boot.scr, as U-Boot's own boot scan does.
    assert env["bootcmd"] == (
        "load ${devtype} ${devnum}:1 ${scriptaddr} boot.scr && source ${scriptaddr}"
    )
    assert (env["devtype"], env["devnum"]) == ("mmc", "0")
    assert env["scriptaddr"] == "0x02400000"
    assert "preboot" not in env


def test_saved_env_without_scriptaddr_is_refused(tmp_path: Path) -> None:
    source = (BOARDS / "rpi3b.toml").read_text()
    assert '"scriptaddr=0x02400000", ' in source
    (tmp_path / "rpi3b.toml").write_text(source.replace('"scriptaddr=0x02400000", ', "", 1))
    with pytest.raises(ConfigError) as caught:
        load_profile(tmp_path / "rpi3b.toml")
    assert "field 'bootloader.env'" in str(caught.value)
    assert "scriptaddr" in str(caught.value)
