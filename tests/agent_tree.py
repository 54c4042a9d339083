"""The on-board agent run as a board runs it, on this machine.

A folder tree laid out as the image's root: the host's static busybox (Debian's
busybox-static, the package the image takes) with the image's own applet links
(fleet.image.rootfs.APPLETS), signify-openbsd and fleet-tool with their libraries, and
fleet's device files at their image paths. The agent runs in it through chroot, with
the paths it ships with: nothing in the agent points it elsewhere.

The board's slot partitions are real loop devices (nodes made in the tree's /dev);
partition 1 is a tmpfs mounted read-only, which the agent remounts read-write as it does
on the board (this host's kernel has no vfat); /proc is a folder holding the few files
the agent reads (cmdline, the firmware's device tree cells, uptime, boot_id, mounts).
The edges a host has not got are the test's own files in the tree: /sbin/reboot and
/etc/fleet/rc.shutdown record what they were asked to do. /usr/sbin/fleet-reboot is the
real one, built from fleet/device/fleet-reboot.c for this machine: every agent command
runs in a PID namespace of its own, where the reboot system call ends that namespace
instead of restarting this machine (reboot(2): "If reboot() is called from a PID
namespace other than the initial one, the effect is to terminate the init process of
that namespace"), and strace records the call and its argument as the kernel got them.

The tree is laid out, and its partitions made, by fleet.lab.simtree, the code simulated
boards run in (fleet lab up --sim): this is one of those boards frozen between commands.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from fleet import bootstate, data_dir
from fleet.image.rootfs import APP_UID, shell_env
from fleet.lab import simrelease, simtree
from fleet.release import load_manifest, manifest_sha256, write_manifest
from fleet.trust import sign_release

SIGNIFY = shutil.which("signify-openbsd")
CHROOT = shutil.which("chroot") or "/usr/sbin/chroot"
UNSHARE = shutil.which("unshare") or "/usr/bin/unshare"
STRACE = shutil.which("strace")
# The namespace's first process: runs the command in the tree, keeps its exit status,
# then stays (as the namespace's reaper) until the command's background work, such as
# the agent's delayed reboot, is done: kill -0 -1 reaches every other process in it.
NS_INIT = (
    '(chroot "$0" "$@"); echo $? > "$0/run/last-exit"; '
    "while kill -0 -1 2>/dev/null; do sleep 0.05; done"
)
SLOT_PARTS = (2, 3, 5, 6)


def available() -> bool:
    return (
        os.geteuid() == 0
        and simtree.BUSYBOX.is_file()
        and SIGNIFY is not None
        and all(shutil.which(p) for p in simtree.HOST_PROGRAMS)
        and shutil.which("gcc") is not None
        and shutil.which("losetup") is not None
        and STRACE is not None
    )


def reboot_calls(trace: str) -> list[str]:
    """strace's record of reboot(2) calls, as "reboot(2) CMD ARG" lines, e.g.
    'reboot(2) RESTART2 0 tryboot'."""
    found = []
    for line in trace.splitlines():
        match = re.search(
            r"reboot\(LINUX_REBOOT_MAGIC1, [^,]+, LINUX_REBOOT_CMD_(\w+)(?:, \"(.*)\")?", line
        )
        if match:
            found.append(" ".join(x for x in ("reboot(2)", match[1], match[2]) if x))
    return found


def _stub(path: Path, record: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    path.write_text(f'#!/bin/sh\necho "{record} $*" >> /reboots\n')
    path.chmod(0o755)


class AgentTree:
    """One board: ``boot_method`` uboot-ab (disk /dev/vda) or rpi-tryboot (/dev/mmcblk0p)."""

    def __init__(
        self,
        root: Path,
        pubkeys: list[Path],
        *,
        board: str = "qemu-virt-arm64",
        boot_method: str = "uboot-ab",
        part_mib: int = 2,
    ) -> None:
        self.root = root
        # strace's record, beside the tree rather than in it (the tree is the board's).
        self.reboot_trace = root.parent / f"{root.name}.reboot-calls"
        self.boot_method = boot_method
        disk = "/dev/mmcblk0p" if boot_method == "rpi-tryboot" else "/dev/vda"
        self.disk = disk
        self.loops: dict[int, str] = {}
        self.mounted = False
        simtree.lay_out(root)
        (root / "parts").mkdir(exist_ok=True)
        # The board's remote-control edges: recorded, not taken (fleet-reboot is real).
        _stub(root / "sbin" / "reboot", "reboot")
        _stub(root / "etc/fleet/rc.shutdown", "shutdown")
        for pub in pubkeys:
            shutil.copyfile(pub, root / "etc/fleet/keys" / pub.name)
        simtree.write_board_env(root, board, boot_method, disk)
        self.set_app("1.0.0", 1)
        (root / "proc/uptime").write_text("100.00 50.00\n")
        self.set_boot_id("00000000-0000-0000-0000-000000000001")
        self.set_cmdline("console=ttyAMA0 fleet.slot=A")
        self.set_device_tree(2, False)
        try:
            simtree.mount_firmware(root / "boot/firmware", 16)
            self.mounted = True
            for number in SLOT_PARTS:
                backing = root / "parts" / f"p{number}.img"
                with backing.open("wb") as handle:
                    handle.truncate(part_mib << 20)
                node = root / f"dev/{Path(disk).name}{number}"
                self.loops[number] = simtree.attach_loop(backing, node)
        except BaseException:
            self.close()
            raise

    # ---- what the board's kernel and firmware tell the agent ------------------------
    def set_app(self, version: str, release: int, timeout: int = 60) -> None:
        (self.root / "etc/fleet/app.env").write_bytes(
            shell_env(
                {
                    "FLEET_APP_NAME": "hello",
                    "FLEET_APP_VERSION": version,
                    "FLEET_RELEASE": str(release),
                    "FLEET_HEALTH_TIMEOUT": str(timeout),
                    "FLEET_APP_UID": str(APP_UID),
                }
            )
        )

    def set_cmdline(self, text: str) -> None:
        (self.root / "proc/cmdline").write_text(text + "\n")

    def set_boot_id(self, text: str) -> None:
        (self.root / "proc/sys/kernel/random/boot_id").write_text(text + "\n")

    def set_device_tree(self, partition: int, tryboot: bool) -> None:
        cells = self.root / "proc/device-tree/chosen/bootloader"
        (cells / "partition").write_bytes(partition.to_bytes(4, "big"))
        (cells / "tryboot").write_bytes(int(tryboot).to_bytes(4, "big"))

    # ---- running it -----------------------------------------------------------------
    def run(
        self,
        *args: str,
        data: bytes | None = None,
        program: str = "/etc/fleet/agent",
        env: dict[str, str] | None = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[bytes]:
        last = self.root / "run/last-exit"
        last.unlink(missing_ok=True)
        assert STRACE is not None
        proc = subprocess.run(
            [STRACE, "-f", "-qq", "--seccomp-bpf", "-e", "trace=reboot", "-e", "signal=none",
             "-A", "-o", str(self.reboot_trace),
             UNSHARE, "--pid", "--fork", "--kill-child",
             "/bin/sh", "-c", NS_INIT, str(self.root), "/bin/sh", program, *args],
            input=data,
            capture_output=True,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **(env or {})},
            timeout=timeout,
            check=False,
        )
        # A reboot ended the namespace (its init dies, unshare then with SIGHUP): the
        # command's own exit status is the one it left.
        code = int(last.read_text()) if last.exists() else proc.returncode
        return subprocess.CompletedProcess(proc.args, code, proc.stdout, proc.stderr)

    def agent(self, *args: str, data: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        return self.run(*args, data=data)

    def set_meminfo(self, available_kib: int | None) -> None:
        """/proc/meminfo with MemAvailable (None: no /proc/meminfo at all)."""
        path = self.root / "proc/meminfo"
        if available_kib is None:
            path.unlink(missing_ok=True)
            return
        path.write_text(
            f"MemTotal:        1000000 kB\nMemFree:          10000 kB\n"
            f"MemAvailable:   {available_kib:8d} kB\n"
        )

    def add_applier(self, applier: Path) -> None:
        target = self.root / "usr/sbin/fleet-delta"
        shutil.copyfile(applier, target)
        target.chmod(0o755)

    def hold_in_running_slot(self, release: Path, record: bool = False) -> None:
        """Slot A (partitions 2 and 5, the running slot) written with RELEASE's payloads;
        with ``record``, its boot state says so too, as a flashed disk's does."""
        manifest = load_manifest(release)
        for payload in manifest.payloads:
            with open(self.loops[{"boot": 2, "rootfs": 5}[payload.name]], "r+b") as part:
                part.write((release / payload.file).read_bytes())
        if not record:
            return
        state = bootstate.BootState(
            seq=1,
            floor=manifest.release,
            slot_a=f"{manifest.release}:{manifest.version}:{manifest_sha256(release)}",
        )
        subprocess.run(["mount", "-o", "remount,rw", str(self.firmware)], check=True)
        try:
            (self.firmware / "fleet").mkdir(exist_ok=True)
            (self.firmware / bootstate.COPIES[0]).write_bytes(bootstate.encode(state))
            (self.firmware / bootstate.COPIES[1]).unlink(missing_ok=True)
        finally:
            subprocess.run(["mount", "-o", "remount,ro", str(self.firmware)], check=True)
        self.set_app(manifest.version, manifest.release)

    def partition(self, number: int) -> bytes:
        return (self.root / "parts" / f"p{number}.img").read_bytes()

    @property
    def firmware(self) -> Path:
        return self.root / "boot/firmware"

    def reboots(self, wait: float = 5.0) -> list[str]:
        """What the agent asked of the reboot edges; waits for its background request."""
        path = self.root / "reboots"
        deadline = time.monotonic() + wait
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.05)  # the last stub of a chain (shutdown, then reboot)
        lines = path.read_text().splitlines() if path.exists() else []
        path.unlink(missing_ok=True)
        calls = self.reboot_trace
        if calls.exists():
            lines += reboot_calls(calls.read_text())
            calls.unlink()
        return lines

    def files_outside_incoming(self) -> dict[str, bytes]:
        """Every file of the tree but the agent's scratch folders, by path (for checking
        that a refused upload touched nothing)."""
        found: dict[str, bytes] = {}
        for path in sorted(self.root.rglob("*")):
            rel = str(path.relative_to(self.root))
            if (
                rel.startswith(("run/", "proc/", "parts/", "dev/"))
                or path.is_dir()
                or path.is_symlink()
            ):
                continue
            found[rel] = path.read_bytes()
        return found

    def close(self) -> None:
        simtree.release(self.loops.values(), self.firmware if self.mounted else None)
        self.loops.clear()
        self.mounted = False


def make_release(
    folder: Path, key: Path, number: int, board: str = "qemu-virt-arm64", size: int = 5000
) -> Path:
    """A signed release of small payloads (boot.img, rootfs.img) for the agent tree."""
    return simrelease.make_release(folder, key, number, board=board, size=size, app="hello")


def build_applier(folder: Path) -> Path:
    """fleet-delta, the board's delta applier, built for this machine from its source."""
    out = folder / "fleet-delta"
    subprocess.run(
        ["gcc", "-O2", "-Wall", "-Wextra", "-Werror", "-o", out,
         data_dir("device") / "fleet-delta.c", "-Wl,-Bstatic", "-lzstd", "-Wl,-Bdynamic"],
        check=True,
    )
    return out


def related_release(base: Path, folder: Path, key: Path, number: int, at: int = 1000) -> Path:
    """Release NUMBER whose payloads are BASE's with ten bytes changed at offset AT, signed
    by KEY."""
    import dataclasses
    import hashlib

    folder.mkdir()
    manifest = load_manifest(base)
    payloads = []
    for payload in manifest.payloads:
        data = bytearray((base / payload.file).read_bytes())
        data[at : at + 10] = b"0123456789"
        (folder / payload.file).write_bytes(data)
        payloads.append(
            dataclasses.replace(payload, sha256=hashlib.sha256(bytes(data)).hexdigest()))
    write_manifest(folder, dataclasses.replace(
        manifest, release=number, version=f"{number}.0.0", payloads=tuple(payloads)))
    sign_release(folder, key)
    return folder
