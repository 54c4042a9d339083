"""Image size and boot time of the hello image on the virtual lab.

Prints the two slot payloads' sizes (target: under 16 MiB together, against a general
purpose distribution image of about 200 MB) and the seconds from `fleet lab up` to the
app answering its health check through the forwarded port, over a few boots.
"""

from __future__ import annotations

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
        times = []
        for boot in range(BOOTS):
            name = f"bench{boot}"
            t0 = time.monotonic()
            board = json.loads(fleet("lab", "up", "--board", "qemu-virt-arm64", "--disk",
                                     work / "out" / "disk.img", "--name", name, "--json"))
            healthy(board["app_port"], t0 + 120)
            times.append(time.monotonic() - t0)
            fleet("lab", "down", name)
        times.sort()
        print(f"lab up -> healthy app: median {times[len(times) // 2]:.1f} s over {BOOTS} "
              f"boots (min {times[0]:.1f} s, max {times[-1]:.1f} s)")


if __name__ == "__main__":
    main()
