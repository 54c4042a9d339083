"""``fleet build`` from start to end: packages, app, kernel, rootfs, payloads, release,
disk image, bmap and report. Everything lands in OUT only when all of it is made."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from fleet import __version__, bootstate
from fleet.boards import BoardProfile
from fleet.errors import BuildError
from fleet.hashing import sha256_file
from fleet.image import (
    bootscript,
    datafs,
    debian,
    device_tools,
    disk,
    initramfs,
    kernel,
    payloads,
    report,
    rootfs,
    verity,
    wireless,
)
from fleet.image.app import DEFAULT_EPOCH, build_app, source_files
from fleet.image.elf import check_tree, needed_closure
from fleet.project import Project
from fleet.release import Health, Manifest, Payload, manifest_sha256, write_manifest

RELEASE_DIR = "release"
DISK_IMAGE = "disk.img"
STEPS = ("packages", "app", "kernel", "rootfs", "payloads", "release", "disk", "report")


@dataclass(frozen=True)
class BuildResult:
    release: Path
    disk: Path
    bmap: Path
    manifest: Manifest
    report: Path
    signed_by: tuple[str, ...]


def epoch() -> int:
    return int(os.environ.get("SOURCE_DATE_EPOCH", DEFAULT_EPOCH))


def _packages_for(profile: BoardProfile, project: Project) -> list[str]:
    names = [*rootfs.BASE_PACKAGES, profile.kernel.package, *project.packages]
    loader = profile.bootloader
    if loader and loader.install.startswith("file:"):
        names.append(loader.package)
    if profile.firmware is not None:
        names.append(profile.firmware.package)
    names += wireless.packages(profile, project)
    if project.pull is not None and project.pull.https:
        names += rootfs.TLS_PACKAGES
    return sorted(set(names))


def build(
    project: Project,
    profile: BoardProfile,
    out: Path,
    *,
    key: Path | None = None,
    trust: Path | None = None,
    development: bool = False,
    netboot: bool = False,
    step: Callable[[str], None] = lambda name: None,
) -> BuildResult:
    """Build the release and disk image into ``out``.

    ``key`` signs the release. ``trust`` (a trust folder or one public key) is what the
    image's board will trust; without it the board trusts ``key``'s public key, and
    with neither it trusts nothing and refuses every update until re-flashed.
    ``development`` makes an image that also takes shell keys (see rootfs.assemble).
    ``netboot`` adds what a U-Boot board needs to run the release over the network
    (boot.scr.uimg and initrd-net.zst, docs/netboot.md) to the boot payload: 1.9 MB
    that every update then carries too, so only when asked.
    """
    mtime = epoch()
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = out / ".work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()

    step("packages")
    names = _packages_for(profile, project)
    debs = debian.lock_packages(project.lock_path, profile.debian_arch, names)
    roots = {deb.name: debian.extract(deb) for deb in debs.values()}

    step("app")
    app_binary = build_app(
        project, profile.arch, work, cache=debian.cache_dir() / "app", epoch=mtime
    )

    step("kernel")
    kernel_pkg = [
        n
        for n, r in roots.items()
        if n.startswith("linux-image-") and any((r / "boot").glob("vmlinuz-*"))
    ]
    if len(kernel_pkg) != 1:
        raise BuildError(f"expected one kernel among {profile.kernel.package}'s packages")
    ktree = kernel.find_kernel(roots[kernel_pkg[0]])
    if profile.boot_method == "rpi-tryboot" and not kernel.passes_tryboot(ktree):
        raise BuildError(
            f"board {profile.name} boots by rpi-tryboot, but kernel {ktree.version} "
            f"({kernel_pkg[0]}) does not pass the tryboot flag to the Pi firmware: every "
            "trial would boot the old slot. Use boot method uboot-ab, or a kernel that "
            "passes it (Raspberry Pi's; docs/ab-update.md)"
        )
    boot_modules = kernel.resolve_modules(ktree, profile.kernel.boot_modules)
    wanted = [*profile.kernel.modules, *profile.network.modules]
    wanted += wireless.modules(profile, project)
    if profile.watchdog_module:
        wanted.append(profile.watchdog_module)
    system_modules = [m for m in kernel.resolve_modules(ktree, wanted) if m not in boot_modules]

    step("rootfs")
    staged = rootfs.assemble(
        work / "rootfs",
        profile,
        project,
        app_binary,
        roots,
        ktree,
        system_modules,
        project.release_number,
        _board_trust(key, trust),
        kernel_package=kernel_pkg[0],
        development=development,
    )
    tool = device_tools.build_fleet_tool(profile.arch, work, mtime)
    staged.add_file("usr/sbin/fleet-tool", tool, "fleet", 0o755)
    loader = device_tools.build_module_loader(profile.arch, work, mtime)
    staged.add_file("usr/sbin/fleet-modules", loader, "fleet", 0o755)
    applier = device_tools.build_delta_applier(profile.arch, work, mtime)
    if applier is not None:
        staged.add_file("usr/sbin/fleet-delta", applier, "fleet", 0o755)
    if profile.boot_method == "rpi-tryboot":
        helper = device_tools.build_reboot_helper(profile.arch, work, mtime)
        staged.add_file("usr/sbin/fleet-reboot", helper, "fleet", 0o755)
    check_tree(staged.root, profile.arch, profile.name)

    step("payloads")
    # Everything is made in work/ and moved into OUT at the very end: a failed build
    # leaves OUT as it was, never a new release beside an old disk image.
    release_tmp = work / RELEASE_DIR
    release_tmp.mkdir()
    rootfs_img = release_tmp / "rootfs.squashfs"
    payloads.make_squashfs(staged.root, rootfs_img, mtime)
    # The rootfs payload is the squashfs and its dm-verity hash tree; the slot's
    # initramfs carries the root hash, so the board checks every block it reads.
    root_verity = verity.append_hash_tree(
        rootfs_img, verity.release_salt(project.name, profile.name)
    )
    mapper = device_tools.build_verity_helper(profile.arch, work, mtime)
    boot_img = release_tmp / "boot.vfat"
    boot_files = _boot_files(
        work, profile, ktree, roots, boot_modules, mtime, mapper=mapper, root_verity=root_verity
    )
    if netboot:
        if profile.boot_method != "uboot-ab":
            raise BuildError(
                f"board {profile.name} boots by {profile.boot_method}: --netboot is for "
                "U-Boot boards (uboot-ab) only (docs/netboot.md)"
            )
        boot_files.update(
            _netboot_files(
                work / "boot", profile, ktree, roots, staged.root, mtime, mapper, root_verity
            )
        )
    payloads.make_fat(boot_img, boot_files, "FLEETSLOT", mtime)

    step("release")
    manifest = Manifest(
        app=project.name,
        version=project.version,
        release=project.release_number,
        board=profile.name,
        arch=profile.arch,
        payloads=tuple(
            Payload(name, path.name, path.stat().st_size, sha256_file(path))
            for name, path in (("boot", boot_img), ("rootfs", rootfs_img))
        ),
        health=Health(
            project.health.http, project.health.command, project.port, project.health.timeout_s
        ),
        inputs={
            **_inputs(project, profile, debs),
            "development": development,
            **({"netboot": True} if netboot else {}),
        },
        verity=root_verity,
    )
    write_manifest(release_tmp, manifest)
    signed: tuple[str, ...] = ()
    if key is not None:
        from fleet.trust import sign_release

        signed = (sign_release(release_tmp, key),)

    step("disk")
    flashed = bootstate.BootState(
        seq=1,
        floor=manifest.release,
        slot_a=f"{manifest.release}:{manifest.version}:{manifest_sha256(release_tmp)}",
    )
    firmware = _firmware_partition(work, profile, roots, ktree, mtime, flashed)
    image = work / DISK_IMAGE
    data_fs = work / "data.ext4"
    rootfs_sha256 = next(p.sha256 for p in manifest.payloads if p.name == "rootfs")
    datafs.make_data_fs(data_fs, profile.storage.data_mib * disk.MIB, mtime, rootfs_sha256)
    disk.make_disk(image, profile, firmware, boot_img, rootfs_img, data_fs)
    from fleet.bmap import write_bmap

    write_bmap(image, work / f"{DISK_IMAGE}.bmap")

    step("report")
    boot_entries = [
        report.file_entry(
            f"/slot-boot/{name}", path, kernel_pkg[0] if name != "initrd.zst" else "fleet"
        )
        for name, path in sorted(boot_files.items())
    ]
    outputs = work / "outputs"
    outputs.mkdir()
    _write_report(outputs, image, staged, boot_entries, debs, roots, manifest)
    for name in (RELEASE_DIR, DISK_IMAGE, f"{DISK_IMAGE}.bmap"):
        os.replace(work / name, outputs / name)
    _land(outputs, out)
    shutil.rmtree(work, ignore_errors=True)
    return BuildResult(
        out / RELEASE_DIR,
        out / DISK_IMAGE,
        out / f"{DISK_IMAGE}.bmap",
        manifest,
        out / report.SUMMARY_NAME,
        signed,
    )


def _land(outputs: Path, out: Path) -> None:
    """Move each finished output into ``out``, replacing the previous build's."""
    for item in sorted(outputs.iterdir()):
        target = out / item.name
        if item.is_dir() and target.exists():
            old = out / f".{item.name}.old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(item, target)
            shutil.rmtree(old)
        else:
            os.replace(item, target)


def _board_trust(key: Path | None, trust: Path | None) -> rootfs.BoardTrust:
    from fleet.trust import load_secret_key, load_trust

    if trust is not None:
        trusted = load_trust(trust)
        return rootfs.BoardTrust(
            keys={kid: pub.to_bytes() for kid, pub in trusted.keys.items()},
            revoked=frozenset(trusted.revoked),
            threshold=trusted.threshold,
        )
    if key is not None:
        public = load_secret_key(key).public
        return rootfs.BoardTrust(keys={public.key_id: public.to_bytes()})
    return rootfs.BoardTrust(keys={})


def _boot_files(
    work: Path,
    profile: BoardProfile,
    ktree: kernel.KernelTree,
    roots: dict[str, Path],
    boot_modules: list[Path],
    mtime: int,
    *,
    mapper: Path,
    root_verity: verity.Verity,
) -> dict[str, Path]:
    folder = work / "boot"
    folder.mkdir()
    image = folder / "Image.gz"
    image.write_bytes(gzip.compress(ktree.image.read_bytes(), compresslevel=9, mtime=mtime))
    initrd = folder / "initrd.zst"
    busybox = roots["busybox-static"] / "bin/busybox"
    initrd.write_bytes(
        initramfs.build_initramfs(
            busybox,
            ktree,
            boot_modules,
            mtime,
            mapper=mapper,
            verity=root_verity,
        )
    )
    files = {"Image.gz": image, "initrd.zst": initrd}
    if profile.kernel.dtb:
        dtb = folder / bootscript.DTB_NAME
        shutil.copyfile(ktree.dtb(profile.kernel.dtb), dtb)
        files[bootscript.DTB_NAME] = dtb
    if profile.firmware is not None and profile.boot_method == "rpi-tryboot":
        # With tryboot_a_b the firmware loads its own files from the slot it boots, so
        # they belong to the slot: an update can carry new firmware with its kernel.
        files.update(_firmware_files(folder, profile, roots))
    if profile.boot_method == "rpi-tryboot":
        for name, text in (
            ("config.txt", bootscript.tryboot_config_txt(profile)),
            ("cmdline.txt", bootscript.tryboot_cmdline_txt(profile)),
        ):
            (folder / name).write_text(text)
            files[name] = folder / name
    return files


def _netboot_files(
    folder: Path,
    profile: BoardProfile,
    ktree: kernel.KernelTree,
    roots: dict[str, Path],
    staged_root: Path,
    mtime: int,
    mapper: Path,
    root_verity: verity.Verity,
) -> dict[str, Path]:
    """What U-Boot and the board fetch from `fleet serve` to run this slot from the
    network (docs/netboot.md): boot.scr.uimg and the netboot initramfs. In the slot's
    boot payload, so the netboot tree is the signed release's bytes."""
    names = [*profile.kernel.boot_modules, *profile.network.netboot_modules, "loop"]
    signify = PurePosixPath("bin/signify-openbsd")
    closure = needed_closure(staged_root, [staged_root / str(signify)], profile.arch)
    initrd = folder / bootscript.NETBOOT_INITRD
    initrd.write_bytes(
        initramfs.build_netboot_initramfs(
            roots["busybox-static"] / "bin/busybox",
            kernel.resolve_modules(ktree, names),
            mtime,
            mapper=mapper,
            verity=root_verity,
            root=staged_root,
            signify=[signify, *closure],
            board=profile.name,
            interface=profile.network.interface,
        )
    )
    script = bootscript.make_uboot_script(
        folder, bootscript.netboot_script_text(profile), bootscript.NETBOOT_SCRIPT
    )
    return {bootscript.NETBOOT_INITRD: initrd, bootscript.NETBOOT_SCRIPT: script}


def _firmware_files(folder: Path, profile: BoardProfile, roots: dict[str, Path]) -> dict[str, Path]:
    assert profile.firmware is not None
    root = roots[profile.firmware.package]
    files = {}
    for rel in profile.firmware.files:
        source = root / rel
        if not source.is_file():
            raise BuildError(f"{profile.firmware.package} has no {rel} (board {profile.name})")
        target = folder / Path(rel).name
        shutil.copyfile(source, target)
        files[target.name] = target
    return files


def _firmware_partition(
    work: Path,
    profile: BoardProfile,
    roots: dict[str, Path],
    ktree: kernel.KernelTree,
    mtime: int,
    flashed: bootstate.BootState,
) -> Path:
    folder = work / "firmware"
    folder.mkdir()
    files: dict[str, Path] = {}
    if profile.boot_method == "uboot-ab":
        files["boot.scr"] = bootscript.make_uboot_script(folder)
        board_file = folder / "uboot-board.txt"
        board_file.write_text(bootscript.uboot_board_text(profile))
        files[bootscript.BOARD_FILE] = board_file
        if profile.bootloader and profile.bootloader.saved_env:
            name = profile.bootloader.saved_env
            (folder / name).write_bytes(bootscript.uboot_saved_env(profile))
            files[name] = folder / name
    else:
        (folder / "autoboot.txt").write_text(bootscript.tryboot_autoboot_txt())
        files["autoboot.txt"] = folder / "autoboot.txt"
    loader = profile.bootloader
    if loader and loader.install.startswith("file:"):
        name = loader.install.removeprefix("file:")
        shutil.copyfile(roots[loader.package] / loader.file, folder / name)
        files[name] = folder / name
        # The Pi firmware reads config.txt to load U-Boot in 64-bit mode, and hands it the
        # device tree named here: Debian's kernel has mainline's names, which are not
        # always the firmware's own (a CM4's is bcm2711-rpi-cm4-io.dtb, not -cm4.dtb).
        lines = ["arm_64bit=1", "enable_uart=1", f"kernel={name}", *bootscript.FAST_FIRMWARE]
        if profile.kernel.dtb:
            # QEMU (standing in for the GPU firmware) and the firmware itself read it here.
            dtb_name = Path(profile.kernel.dtb).name
            shutil.copyfile(ktree.dtb(profile.kernel.dtb), folder / dtb_name)
            files[dtb_name] = folder / dtb_name
            lines.append(f"device_tree={dtb_name}")
        (folder / "config.txt").write_text("\n".join(lines) + "\n")
        files["config.txt"] = folder / "config.txt"
    if profile.firmware is not None and profile.boot_method == "uboot-ab":
        # The GPU firmware that loads U-Boot reads its files from the first partition.
        files.update(_firmware_files(folder, profile, roots))
    (folder / "fleet").mkdir()
    readme = folder / "fleet" / "README.txt"
    readme.write_text(
        "fleet keeps this board's boot state and provisioning settings in this folder.\n"
    )
    files["fleet/README.txt"] = readme
    # Slot A's release recorded as an install records it: a board fresh from this disk
    # reports the manifest it runs, so its first update can already be a delta.
    state_copy = folder / bootstate.COPIES[0]
    state_copy.write_bytes(bootstate.encode(flashed))
    files[bootstate.COPIES[0]] = state_copy
    size = profile.storage.firmware_mib << 20
    output = work / "firmware.vfat"
    payloads.make_fat(output, files, "FLEETBOOT", mtime, size=size)
    return output


def _inputs(project: Project, profile: BoardProfile, debs: dict[str, debian.Deb]) -> dict[str, Any]:
    sources = hashlib.sha256()
    for path in source_files(project):
        sources.update(str(path).encode() + b"\0" + (project.root / path).read_bytes())
    return {
        "fleet": __version__,
        "board_profile_sha256": hashlib.sha256(profile.source.read_bytes()).hexdigest(),
        "sources_sha256": sources.hexdigest(),
        "packages": {d.name: d.version for d in sorted(debs.values(), key=lambda d: d.name)},
        "source_date_epoch": epoch(),
    }


def _write_report(
    out: Path,
    image: Path,
    staged: rootfs.Staged,
    boot_entries: list[report.FileEntry],
    debs: dict[str, debian.Deb],
    roots: dict[str, Path],
    manifest: Manifest,
) -> Path:
    files = boot_entries + report.tree_entries(
        staged.root, lambda image_path: staged.origin.get(image_path.lstrip("/"), "unknown")
    )
    used = {entry.origin for entry in files}
    packages = [
        report.PackageEntry(
            d.name, d.version, d.arch, report.package_license(roots[d.name], d.name)
        )
        for d in sorted(debs.values(), key=lambda d: d.name)
        if d.name in used
    ]
    sizes = [report.Payload(p.file, p.size) for p in manifest.payloads]
    sizes.append(report.Payload(DISK_IMAGE, image.stat().st_size, counted=False))
    image_report = report.ImageReport(
        app=manifest.app,
        version=manifest.version,
        board=manifest.board,
        files=tuple(files),
        packages=tuple(packages),
        payloads=tuple(sizes),
    )
    _sbom, summary = report.write_report(image_report, out, epoch())
    return summary
