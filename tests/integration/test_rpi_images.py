"""Images for the real Raspberry Pi boards. The Pi 4 and CM4 boot through Debian's U-Boot
(rpi_arm64) with the same boot script bytes and boot state as the virtual boards, and
every slot's root is named by PARTUUID. rpi-tryboot is built only with a kernel that
hands the tryboot flag to the firmware; Debian's does not, and the build says so."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from fleet.boards import load_profile
from fleet.errors import BuildError
from fleet.image import initramfs, kernel
from fleet.image.debian import cache_dir
from fleet.image.disk import read_partitions
from fleet.image.elf import read
from fleet.project import load_project
from tests.conftest import Built, copy_example, fleet

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def fat_files(image: str) -> dict[str, bytes]:
    names = subprocess.run(["mdir", "-/", "-b", "-i", image, "::"], capture_output=True,
                           text=True, check=True).stdout.split()
    files = {}
    for name in names:
        if name.endswith("/"):
            continue
        files[name.removeprefix("::/")] = subprocess.run(
            ["mtype", "-i", image, name], capture_output=True, check=True).stdout
    return files


def first_partition(disk: Path) -> dict[str, bytes]:
    return fat_files(f"{disk}@@{read_partitions(disk)[1].start}")


def u_boot_rpi_arm64(app: Path) -> bytes:
    """The bytes of Debian's rpi_arm64 U-Boot, from the package the build pinned."""
    pins = json.loads((app / "fleet.lock").read_text())["packages"]
    deb = next(p for p in pins if p["name"] == "u-boot-rpi")
    found = list(cache_dir().rglob(deb["filename"]))
    assert found, f"{deb['filename']} is not in the download cache"
    out = subprocess.run(["dpkg-deb", "--fsys-tarfile", found[0]], capture_output=True,
                         check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(out)) as tar:
        member = tar.extractfile("./usr/lib/u-boot/rpi_arm64/u-boot.bin")
        assert member is not None
        return member.read()


@pytest.mark.parametrize("board, dtb", [("rpi4b", "bcm2711-rpi-4-b.dtb"),
                                        ("cm4", "bcm2711-rpi-cm4-io.dtb")])
def test_pi4_and_cm4_boot_through_debians_u_boot_like_the_virtual_boards(
    tmp_path: Path, hello_virt: Built, board: str, dtb: str
) -> None:
    app = copy_example("hello-c", tmp_path / "app", lock_from=hello_virt.app)
    out = tmp_path / "out"
    fleet("build", "--board", board, "--project", app, "--out", out, "--key", hello_virt.key)

    first = first_partition(out / "disk.img")
    # The GPU firmware loads Debian's U-Boot in 64-bit mode, with the board's device tree.
    assert first["kernel8.img"] == u_boot_rpi_arm64(app)
    config = first["config.txt"].decode().splitlines()
    assert {"arm_64bit=1", "kernel=kernel8.img", f"device_tree={dtb}"} <= set(config)
    assert {"start4.elf", "fixup4.dat", dtb} <= set(first)
    assert "autoboot.txt" not in first  # no firmware tryboot
    # The same boot script bytes as the virtual board's; what differs is its own file.
    assert first["boot.scr"] == first_partition(hello_virt.disk)["boot.scr"]
    board_env = first["fleet/uboot-board.txt"].decode()
    assert "fleet_dtb=board.dtb" in board_env and "fleet_console=ttyS1,115200" in board_env
    # U-Boot's saved environment (uboot.env, CRC32 + pairs) runs boot.scr from mmc 0.
    saved = first["uboot.env"]
    assert len(saved) == 0x4000
    pairs = saved[4:].split(b"\0")
    assert b"devtype=mmc" in pairs and b"devnum=0" in pairs
    assert any(p.startswith(b"bootcmd=load ${devtype} ${devnum}:1") for p in pairs)

    # Each slot's root is named by PARTUUID: the disk's fixed identifier and partition
    # 5 or 6, never a kernel device name.
    script = first["boot.scr"].decode(errors="replace")
    assert "fleet.root=PARTUUID=464c4554-0${fleet_rootpart}" in script
    assert "/dev/" not in script
    mbr = (out / "disk.img").read_bytes()[440:444]
    assert mbr == bytes.fromhex("464c4554")[::-1]
    slot = fat_files(str(out / "release" / "boot.vfat"))
    assert {"Image.gz", "initrd.zst", "board.dtb"} <= set(slot)
    assert "config.txt" not in slot and "start4.elf" not in slot  # firmware stays on p1


def tryboot_profile(tmp_path: Path) -> Path:
    """A Pi 4 profile that asks for the firmware's tryboot with Debian's kernel."""
    folder = tmp_path / "boards"
    folder.mkdir()
    text = (REPO / "boards" / "rpi4b.toml").read_text()
    start, end = text.index("[bootloader]"), text.index("[firmware]")
    text = text[:start] + text[end:]
    text = text.replace('name = "rpi4b"', 'name = "rpi4b-tryboot"')
    text = text.replace('method = "uboot-ab"', 'method = "rpi-tryboot"')
    (folder / "rpi4b-tryboot.toml").write_text(text)
    return folder / "rpi4b-tryboot.toml"


def test_rpi_tryboot_is_refused_with_a_kernel_that_drops_the_flag(
    tmp_path: Path, hello_virt: Built
) -> None:
    profile = tryboot_profile(tmp_path)
    app = copy_example("hello-c", tmp_path / "app", lock_from=hello_virt.app)
    proc = fleet("build", "--board", "rpi4b-tryboot", "--project", app, "--out", tmp_path / "out",
                 "--key", hello_virt.key, check=False,
                 env={"FLEET_BOARDS_DIR": str(profile.parent)})
    assert proc.returncode != 0
    line = proc.stderr.strip().splitlines()[-1]
    assert "boots by rpi-tryboot, but kernel" in line
    assert "does not pass the tryboot flag to the Pi firmware" in line
    assert not (tmp_path / "out" / "disk.img").exists()


def test_rpi_tryboot_image_with_a_kernel_that_passes_the_flag(
    tmp_path: Path, hello_virt: Built, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The layout a tryboot board gets, given a kernel that passes the flag (Raspberry
    Pi's, which Debian's archive has not: the kernel check is what stands in)."""
    from fleet.image import pipeline

    profile = load_profile(tryboot_profile(tmp_path))
    app = copy_example("hello-c", tmp_path / "app", lock_from=hello_virt.app)
    with pytest.raises(BuildError, match="does not pass the tryboot flag"):
        pipeline.build(load_project(app), profile, tmp_path / "refused", key=hello_virt.key)
    monkeypatch.setattr(kernel, "passes_tryboot", lambda tree: True)
    out = tmp_path / "out"
    pipeline.build(load_project(app), profile, out, key=hello_virt.key)

    first = first_partition(out / "disk.img")
    assert first["autoboot.txt"].decode() == (
        "[all]\ntryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=3\n"
    )
    assert "boot.scr" not in first  # the firmware boots the kernel itself, no U-Boot
    slot = fat_files(str(out / "release" / "boot.vfat"))
    assert {"start4.elf", "fixup4.dat", "Image.gz", "initrd.zst", "board.dtb"} <= set(slot)
    config = slot["config.txt"].decode()
    assert "kernel=Image.gz" in config and "initramfs initrd.zst followkernel" in config
    # Slots A and B carry the same bytes: the root is found by PARTUUID from the booted
    # partition, with the disk identifier the initramfs carries.
    assert "fleet.root" not in slot["cmdline.txt"].decode()
    initrd = initramfs.decompress(slot["initrd.zst"])
    assert b"etc/disk-id\x00" in initrd and b"464c4554\n" in initrd
    assert b"/dev/mmcblk0p" not in initrd
    extracted = tmp_path / "root"
    subprocess.run(["unsquashfs", "-q", "-d", extracted, out / "release" / "rootfs.squashfs",
                    "usr/sbin/fleet-reboot"], check=True, capture_output=True)
    helper = read(extracted / "usr/sbin/fleet-reboot")
    assert helper.machine_name == "AArch64"


def rootfs_names(out: Path) -> set[str]:
    listing = subprocess.run(["unsquashfs", "-l", "-d", "", out / "release" / "rootfs.squashfs"],
                             capture_output=True, text=True, check=True).stdout
    return {line.strip().lstrip("/") for line in listing.splitlines() if line.strip()}


WIFI_PARTS = ("usr/sbin/wpa_supplicant", "etc/fleet/wifi-up", "brcmfmac.ko", "lib/firmware/brcm/")
GADGET_PARTS = ("etc/fleet/gadget-up", "g_ether.ko", "dwc2.ko")


def carries(names: set[str], part: str) -> bool:
    return any(name == part or name.endswith("/" + part) or name.startswith(part) for name in names)


def test_zero2w_carries_its_wifi_and_usb_gadget_and_others_carry_none(
    tmp_path: Path, hello_virt: Built
) -> None:
    app = copy_example("hello-c", tmp_path / "app", lock_from=hello_virt.app)
    images = {}
    for board in ("zero2w", "rpi3b"):
        out = tmp_path / board
        fleet("build", "--board", board, "--project", app, "--out", out, "--key", hello_virt.key)
        images[board] = rootfs_names(out)
    zero = images["zero2w"]
    for part in (*WIFI_PARTS, *GADGET_PARTS):
        assert carries(zero, part), part
    # The chip firmware Debian has (43430: bin and clm_blob); the 43436's is nowhere.
    assert {"lib/firmware/brcm/brcmfmac43430-sdio.bin",
            "lib/firmware/brcm/brcmfmac43430-sdio.clm_blob"} <= zero
    assert not any("43436" in name for name in zero)
    listed = next(line for line in fleet("boards").stdout.splitlines()
                  if line.startswith("zero2w "))
    assert "[wifi: the firmware of the Zero 2 W's BCM43436 chip" in listed
    # A profile without WiFi by default carries none of it, and no gadget (a Pi 3 has
    # dwc2 too, as its USB host controller).
    for part in (*WIFI_PARTS, "etc/fleet/gadget-up", "g_ether.ko"):
        assert not carries(images["rpi3b"], part), part

    # ... unless its project asks: [image] wifi = true.
    asked = copy_example("hello-c", tmp_path / "asked", lock_from=hello_virt.app)
    toml = asked / "fleet.toml"
    toml.write_text(toml.read_text() + "\n[image]\nwifi = true\n")
    out = tmp_path / "rpi3b-wifi"
    fleet("build", "--board", "rpi3b", "--project", asked, "--out", out, "--key", hello_virt.key)
    names = rootfs_names(out)
    assert carries(names, "usr/sbin/wpa_supplicant") and carries(names, "brcmfmac.ko")
    assert "lib/firmware/brcm/brcmfmac43430-sdio.raspberrypi,3-model-b.txt" in names
    assert not carries(names, "g_ether.ko")
