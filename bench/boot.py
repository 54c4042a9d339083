"""Image size and boot time of the hello image on the virtual lab, beside the emulator's
floor.

Prints the two slot payloads' sizes (target: under 16 MiB together, against a general
purpose distribution image of about 200 MB), the seconds from `fleet lab up` to the app
answering its health check through the forwarded port over a few boots, the boot chart
of the median boot (`fleet lab boot-time`), and, in the same run, the floor: the same
kernel started by QEMU directly (-kernel, no bootloader) into a one-line busybox init
that prints and powers off. Target: a healthy app within 2.5x the floor.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FLEET = [sys.executable, "-m", "fleet.cli.main"]
BOOTS = int(os.environ.get("BENCH_BOOTS", "3"))
TARGET = 16 * 2**20
DISTRO = 200 * 10**6


def fleet(*args: str | Path) -> str:
    return subprocess.run([*FLEET, *map(str, args)], check=True, capture_output=True,
                          text=True).stdout


def healthy(port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("the app never became healthy")


FLOOR_LINE = "fleet-floor: init ran"


def _cpio_members(blob: bytes) -> dict[str, bytes]:
    """Files of a newc archive (enough to take busybox out of the slot's initramfs)."""
    members, at = {}, 0
    while at + 110 <= len(blob):
        head = blob[at : at + 110]
        size, namesize = int(head[54:62], 16), int(head[94:102], 16)
        name = blob[at + 110 : at + 110 + namesize - 1].decode()
        at = (at + 110 + namesize + 3) & ~3
        members[name] = blob[at : at + size]
        at = (at + size + 3) & ~3
        if name == "TRAILER!!!":
            break
    return members


def floor(release: Path, work: Path) -> float:
    """Seconds from starting QEMU with the slot's own kernel (-kernel, no bootloader) to
    its exit, after a busybox init that prints one line and powers off."""
    from fleet.image import cpio, initramfs

    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    for member in ("Image.gz", "initrd.zst"):
        subprocess.run(["mcopy", "-o", "-i", str(release / "boot.vfat"), f"::/{member}",
                        str(work / member)], check=True, env=env)
    busybox = _cpio_members(initramfs.decompress((work / "initrd.zst").read_bytes()))["bin/busybox"]
    init = f"#!/bin/busybox sh\n/bin/busybox echo {FLOOR_LINE}\n/bin/busybox poweroff -f\n"
    blob = cpio.archive([cpio.directory("bin"), cpio.file("bin/busybox", busybox, True),
                         cpio.directory("dev"), cpio.file("init", init.encode(), True)])
    (work / "floor.cpio.gz").write_bytes(gzip.compress(blob, compresslevel=1))
    argv = ["qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a53", "-m", "512",
            "-nodefaults", "-display", "none", "-serial", "stdio", "-no-reboot",
            "-kernel", str(work / "Image.gz"), "-initrd", str(work / "floor.cpio.gz"),
            "-append", "console=ttyAMA0 panic=-1 loglevel=4"]
    t0 = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, errors="replace", timeout=120)
    took = time.monotonic() - t0
    if FLOOR_LINE not in done.stdout:
        raise SystemExit(f"the floor's init did not run:\n{done.stdout[-2000:]}")
    return took


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="fleet-bench-boot-") as tmp:
        work = Path(tmp)
        os.environ["FLEET_LAB_DIR"] = str(work / "lab")
        app = work / "app"
        shutil.copytree(REPO / "examples" / "hello-c", app)
        started = time.monotonic()
        built = json.loads(fleet("build", "--board", "qemu-virt-arm64", "--project", app,
                                 "--out", work / "out", "--json"))
        build_s = time.monotonic() - started
        sizes = built["payload_bytes"]
        total = sum(sizes.values())
        print(f"build: {build_s:.1f} s")
        for name, size in sizes.items():
            print(f"payload {name:<7} {size / 2**20:6.2f} MiB")
        print(f"payloads together: {total / 2**20:.2f} MiB (target < 16 MiB: "
              f"{'met' if total < TARGET else 'missed'}; {DISTRO / total:.0f}x smaller "
              "than a ~200 MB general-purpose image)")
        floors = sorted(floor(work / "out" / "release", work) for _ in range(BOOTS))
        floor_s = floors[len(floors) // 2]
        times, charts = [], []
        for boot in range(BOOTS):
            name = f"bench{boot}"
            t0 = time.monotonic()
            board = json.loads(fleet("lab", "up", "--board", "qemu-virt-arm64", "--disk",
                                     work / "out" / "disk.img", "--name", name, "--json"))
            healthy(board["app_port"], t0 + 120)
            times.append(time.monotonic() - t0)
            deadline = time.monotonic() + 30
            while True:  # the board prints its healthy stamp just after the check passes
                chart = fleet("lab", "boot-time", name)
                if "phases not found" not in chart or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            charts.append((times[-1], chart))
            fleet("lab", "down", name)
        median = sorted(times)[len(times) // 2]
        print("\nboot chart of the median boot (fleet lab boot-time):")
        print(next(chart for took, chart in charts if took == median))
        times.sort()
        print(f"\nlab up -> healthy app: median {median:.2f} s over {BOOTS} "
              f"boots (min {times[0]:.2f} s, max {times[-1]:.2f} s)")
        print(f"emulator's floor (same kernel, QEMU -kernel, one-line init, poweroff): "
              f"median {floor_s:.2f} s (min {floors[0]:.2f} s, max {floors[-1]:.2f} s)")
        ratio = median / floor_s
        print(f"healthy app / floor: {ratio:.1f}x (target 2.5x: "
              f"{'met' if ratio <= 2.5 else 'missed'})")


if __name__ == "__main__":
    main()
