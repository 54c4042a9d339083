"""fleet build end to end: a real cross-build, real Debian packages, real squashfs, FAT,
partition table and bmap; checked the way a user would check them."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO, Built, copy_example, fleet

pytestmark = pytest.mark.integration


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def partitions(image: Path) -> dict[int, tuple[int, int]]:
    table = json.loads(subprocess.run(["sfdisk", "--json", image], capture_output=True,
                                      check=True).stdout)["partitiontable"]
    return {int(p["node"][len(str(image)):]): (p["start"] * 512, p["size"] * 512)
            for p in table["partitions"]}


def test_release_payloads_match_their_manifest(hello_virt: Built) -> None:
    manifest = json.loads((hello_virt.release / "manifest.json").read_text())
    assert manifest["app"] == {"name": "hello-c", "version": "1.0.0"}
    assert manifest["board"] == "qemu-virt-arm64" and manifest["arch"] == "aarch64"
    assert manifest["release"] == 1
    assert manifest["inputs"]["packages"]["busybox-static"]
    for payload in manifest["payloads"]:
        path = hello_virt.release / payload["file"]
        assert path.stat().st_size == payload["size"]
        assert sha256(path) == payload["sha256"]
    result = fleet("verify", hello_virt.release, "--trust", hello_virt.pub,
                   "--board", "qemu-virt-arm64")
    assert result.stdout.startswith("ok: hello-c 1.0.0 release 1")


def test_disk_image_holds_slot_a_and_an_empty_slot_b(hello_virt: Built, tmp_path: Path) -> None:
    parts = partitions(hello_virt.disk)
    assert sorted(parts) == [1, 2, 3, 4, 5, 6, 7]
    with hello_virt.disk.open("rb") as disk:
        for number, payload in ((2, "boot.vfat"), (5, "rootfs.squashfs")):
            data = (hello_virt.release / payload).read_bytes()
            disk.seek(parts[number][0])
            assert disk.read(len(data)) == data, f"partition {number} is not {payload}"
        for number in (3, 6):
            disk.seek(parts[number][0])
            assert disk.read(1 << 20) == bytes(1 << 20), f"partition {number} is not empty"
        # The data partition: an empty journaled ext4, so a first boot only mounts it.
        disk.seek(parts[7][0])
        (tmp_path / "data.img").write_bytes(disk.read(parts[7][1]))
    head = subprocess.run(["dumpe2fs", "-h", tmp_path / "data.img"], capture_output=True,
                          text=True, check=True).stdout
    assert "Filesystem volume name:   fleet-data" in head
    features = next(line for line in head.splitlines() if line.startswith("Filesystem features"))
    assert "has_journal" in features and "extent" in features
    files = subprocess.run(["debugfs", "-R", "ls -p /", tmp_path / "data.img"],
                           capture_output=True, text=True, check=True).stdout
    assert {line.split("/")[5] for line in files.splitlines() if line} == {".", "..", "lost+found"}
    listing = subprocess.run(["mdir", "-b", "-i", f"{hello_virt.disk}@@{parts[1][0]}", "::"],
                             capture_output=True, text=True, check=True).stdout
    assert "::/boot.scr" in listing


def test_rootfs_is_just_enough_os(hello_virt: Built) -> None:
    listing = subprocess.run(
        ["unsquashfs", "-l", "-d", "", hello_virt.release / "rootfs.squashfs"],
        capture_output=True, text=True, check=True).stdout.split()
    for needed in ("/app/bin/hello-c", "/bin/busybox", "/usr/sbin/dropbear",
                   "/bin/signify-openbsd", "/lib/aarch64-linux-gnu/libc.so.6",
                   "/etc/fleet/verify-release"):
        assert needed in listing, needed
    assert not [p for p in listing if p.startswith("/usr/share/doc")]
    # Every board makes its own host key: the image must hold none.
    assert not [p for p in listing if "host_key" in p]
    keys = [p for p in listing if p.startswith("/etc/fleet/keys/")]
    assert len(keys) == 1 and keys[0].endswith(".pub")


def test_rebuild_gives_identical_bytes(hello_virt: Built, tmp_path: Path) -> None:
    second = tmp_path / "again"
    fleet("build", "--board", "qemu-virt-arm64", "--project", hello_virt.app, "--out", second,
          "--key", hello_virt.key, "--dev")
    for name in ("release/manifest.json", "release/boot.vfat", "release/rootfs.squashfs",
                 "disk.img", "disk.img.bmap", "sbom.spdx.json", "report.txt"):
        assert sha256(hello_virt.out / name) == sha256(second / name), name


def test_rebuild_needs_no_network_once_cached(hello_virt: Built, tmp_path: Path) -> None:
    lock = json.loads((hello_virt.app / "fleet.lock").read_text())
    pinned = {p["name"]: p["version"] for p in lock["packages"]}
    assert "linux-image-arm64" in pinned and "dropbear-bin" in pinned
    # An archive nobody answers at: a build that tried to download would fail.
    offline = {"FLEET_DEBIAN_SOURCES": "deb http://127.0.0.1:9/debian bookworm main"}
    fleet("build", "--board", "qemu-virt-arm64", "--project", hello_virt.app,
          "--out", tmp_path / "offline", "--key", hello_virt.key, "--dev", env=offline)
    assert sha256(tmp_path / "offline" / "disk.img") == sha256(hello_virt.disk)


def test_image_report_lists_packages_and_sizes(hello_virt: Built) -> None:
    sbom = json.loads((hello_virt.out / "sbom.spdx.json").read_text())
    assert sbom["spdxVersion"] == "SPDX-2.3"
    names = {p["name"]: p.get("versionInfo") for p in sbom["packages"]}
    assert names["busybox-static"].startswith("1:1.35")
    assert "dropbear-bin" in names
    files = {f["fileName"] for f in sbom["files"]}
    assert any(name.endswith("/app/bin/hello-c") for name in files)
    report = (hello_virt.out / "report.txt").read_text()
    assert "boot.vfat" in report and "rootfs.squashfs" in report


def test_bmaptool_flashes_the_disk_image(hello_virt: Built, tmp_path: Path) -> None:
    target = tmp_path / "card.img"
    subprocess.run(["bmaptool", "copy", "--bmap", hello_virt.out / "disk.img.bmap",
                    hello_virt.disk, target], check=True, capture_output=True)
    assert sha256(target) == sha256(hello_virt.disk)


def _recipe_project(hello_virt: Built, tmp_path: Path, recipe: str,
                    extra: dict[str, str]) -> Path:
    # The session build's pins: this project resolves nothing.
    app = copy_example("hello-c", tmp_path / "app", lock_from=hello_virt.app)
    text = (app / "fleet.toml").read_text()
    text = text.replace('language = "c"', f'language = "command"\ncommand = "{recipe}"')
    (app / "fleet.toml").write_text(text)
    for name, body in extra.items():
        (app / name).write_text(body)
    return app


def test_host_linked_binary_is_refused(hello_virt: Built, tmp_path: Path) -> None:
    app = _recipe_project(hello_virt, tmp_path, "cc -o $OUT src/hello.c", {})
    result = fleet("build", "--board", "qemu-virt-arm64", "--project", app,
                   "--out", tmp_path / "out", check=False)
    assert result.returncode == 4
    assert "hello-c" in result.stderr and "x86-64" in result.stderr
    assert "aarch64" in result.stderr.lower()
    assert not (tmp_path / "out" / "disk.img").exists()


def test_binary_needing_a_library_missing_from_the_image_is_refused(
    hello_virt: Built, tmp_path: Path
) -> None:
    recipe = (
        "$CC -shared -fPIC -o libfleetdemo.so demo.c && "
        "$CC -o $OUT src/hello.c -L. -Wl,--no-as-needed -lfleetdemo"
    )
    app = _recipe_project(
        hello_virt, tmp_path, recipe, {"demo.c": "int fleet_demo(void) { return 1; }\n"}
    )
    # OUT already holds a good build: a failed build must leave it as it was.
    out = tmp_path / "out"
    shutil.copytree(hello_virt.out, out)
    before = {p.name: sha256(p) for p in (out / "disk.img", out / "release" / "manifest.json")}
    result = fleet("build", "--board", "qemu-virt-arm64", "--project", app,
                   "--out", out, check=False)
    assert result.returncode == 4, result.stderr
    assert "app/bin/hello-c: needs libfleetdemo.so, which is not in the image" in result.stderr
    after = {p.name: sha256(p) for p in (out / "disk.img", out / "release" / "manifest.json")}
    assert after == before


def test_build_for_an_unsupported_board_says_why(tmp_path: Path) -> None:
    proc = fleet("build", "--board", "rpi5", "--project", REPO / "examples" / "hello-c",
                 "--out", tmp_path / "out", check=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith("fleet: error: board rpi5 is not supported: Debian 12's kernel")
    assert not (tmp_path / "out").exists()
    listed = fleet("boards").stdout
    assert "[unsupported: Debian 12's kernel" in next(
        line for line in listed.splitlines() if line.startswith("rpi5 "))
