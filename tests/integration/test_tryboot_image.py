"""An image for a Raspberry Pi 4 (rpi-tryboot): the firmware's files where the firmware
looks for them, no slot named in the slot's bytes, and the reboot helper on board."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from fleet.image import initramfs
from fleet.image.disk import read_partitions
from fleet.image.elf import read
from tests.conftest import Built, copy_example, fleet

pytestmark = pytest.mark.integration


def fat_files(image: str) -> dict[str, bytes]:
    names = subprocess.run(["mdir", "-b", "-i", image, "::"], capture_output=True, text=True,
                           check=True).stdout.split()
    files = {}
    for name in names:
        if name.endswith("/"):
            continue
        files[name.removeprefix("::/")] = subprocess.run(
            ["mtype", "-i", image, name], capture_output=True, check=True).stdout
    return files


def test_rpi4b_image_follows_the_tryboot_rules(tmp_path: Path, hello_virt: Built) -> None:
    app = copy_example("hello-c", tmp_path / "app")
    out = tmp_path / "out"
    fleet("build", "--board", "rpi4b", "--project", app, "--out", out, "--key", hello_virt.key)

    disk = out / "disk.img"
    first = fat_files(f"{disk}@@{read_partitions(disk)[1].start}")
    assert first["autoboot.txt"].decode() == (
        "[all]\ntryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=3\n"
    )
    assert "boot.scr" not in first  # the firmware boots the kernel itself, no U-Boot

    slot = fat_files(str(out / "release" / "boot.vfat"))
    assert {"start4.elf", "fixup4.dat", "Image.gz", "initrd.zst", "board.dtb"} <= set(slot)
    config = slot["config.txt"].decode()
    assert "kernel=Image.gz" in config and "initramfs initrd.zst followkernel" in config
    # Slots A and B carry the same bytes: the root is found from the booted partition.
    assert "fleet.root" not in slot["cmdline.txt"].decode()
    initrd = initramfs.decompress(slot["initrd.zst"])
    assert b"etc/root-prefix\x00" in initrd and b"/dev/mmcblk0p\n" in initrd

    extracted = tmp_path / "root"
    subprocess.run(["unsquashfs", "-q", "-d", extracted, out / "release" / "rootfs.squashfs",
                    "usr/sbin/fleet-reboot"], check=True, capture_output=True)
    helper = read(extracted / "usr/sbin/fleet-reboot")
    assert helper.machine_name == "AArch64"
