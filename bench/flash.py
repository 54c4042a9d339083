"""Flash a 1 GiB image with about 25% data onto a loop device with dd, bmaptool and
fleet, raw and zstd-compressed, and print the median times and their ratios.

What each tool does, so the figures compare like with like:

* dd writes every byte (conv=fsync); it is verified here by reading the whole device
  back (page cache dropped) and comparing its SHA-256 with the image's.
* bmaptool copy writes the bmap's ranges and checks the image's bytes against the bmap's
  checksums as it reads them; it does not read the device back.
* fleet flash writes the bmap's ranges, syncs, and reads every written range back from
  the device with O_DIRECT, checked against the bmap's checksums.
* fleet flash --no-verify is the like-for-like figure beside bmaptool: it checks the
  image against the bmap as it writes and does not read back.

The page cache is dropped before every run; tools take turns, each run --runs times
(3 by default), and the median is printed. The machine's load average is printed too:
on a shared machine the figures move with it. Needs root (loop devices, drop_caches).
Run: .venv/bin/python bench/flash.py [--runs N]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from fleet.bmap import write_bmap

MiB = 1024 * 1024
SIZE = 1024 * MiB
FLEET = str(Path(sys.executable).parent / "fleet")


def make_image(path: Path) -> None:
    """64 data runs of 4 MiB of random bytes spread over 1 GiB: 25% mapped."""
    rng = random.Random(7)
    with open(path, "wb") as handle:
        handle.truncate(SIZE)
        for i in range(64):
            handle.seek(i * 16 * MiB + rng.randrange(0, 12) * MiB)
            handle.write(rng.randbytes(4 * MiB))


def sha256_of(path: str, length: int) -> str:
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        done = 0
        while done < length:
            block = os.read(fd, min(8 * MiB, length - done))
            if not block:
                break
            digest.update(block)
            done += len(block)
    finally:
        os.close(fd)
    return digest.hexdigest()


def drop_caches() -> None:
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


class Bench:
    def __init__(self) -> None:
        self.times: dict[str, list[float]] = {}
        self.inner: dict[str, list[tuple[float, float]]] = {}  # fleet's own write/verify

    def run(self, name: str, work: Callable[[], str | None]) -> None:
        drop_caches()
        start = time.monotonic()
        output = work()
        self.times.setdefault(name, []).append(time.monotonic() - start)
        if output:
            result = json.loads(output)
            self.inner.setdefault(name, []).append(
                (result["write_seconds"], result["verify_seconds"])
            )

    def median(self, name: str) -> float:
        return statistics.median(self.times[name])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per tool (median printed)")
    runs = parser.parse_args().runs
    with tempfile.TemporaryDirectory(prefix="fleet-bench-flash-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        image = work / "disk.img"
        bmap = work / "disk.img.bmap"
        packed = work / "disk.img.zst"
        make_image(image)
        write_bmap(image, bmap)
        subprocess.run(["zstd", "-q", "-1", "-T0", str(image), "-o", str(packed)], check=True)
        target_file = work / "target.img"
        with open(target_file, "wb") as handle:
            handle.truncate(SIZE)
        node = subprocess.run(
            ["losetup", "--find", "--show", str(target_file)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        image_hash = sha256_of(str(image), SIZE)
        bench = Bench()
        try:
            print(f"1 GiB image, 25% data (256 MiB mapped), target {node}, {runs} runs each")
            print(f"load average at start: {load()} ({os.cpu_count()} CPUs)", flush=True)

            def dd(src: Path, decompress: bool) -> Callable[[], None]:
                def run() -> None:
                    if decompress:
                        cmd = f"zstd -dc {src} | dd of={node} bs=4M conv=fsync iflag=fullblock"
                        subprocess.run(cmd, shell=True, check=True, capture_output=True)
                    else:
                        subprocess.run(
                            ["dd", f"if={src}", f"of={node}", "bs=4M", "conv=fsync"],
                            check=True,
                            capture_output=True,
                        )
                    assert sha256_of(node, SIZE) == image_hash, "dd read-back differs"

                return run

            def bmaptool(src: Path) -> Callable[[], None]:
                def run() -> None:
                    cmd = ["bmaptool", "copy", "--bmap", str(bmap), str(src), node]
                    subprocess.run(cmd, check=True, capture_output=True)

                return run

            def fleet(src: Path, *extra: str) -> Callable[[], str]:
                def run() -> str:
                    cmd = [FLEET, "flash", str(src), "-d", node, "--yes", "--json", *extra]
                    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout

                return run

            def startup() -> None:
                # parses the command line, then stops at the missing image
                missing = str(work / "missing.img")
                subprocess.run([FLEET, "flash", missing, "-d", node, "--yes"], capture_output=True)

            tools: list[tuple[str, Callable[[], str | None]]] = [("fleet start-up", startup)]
            for label, src in (("raw", image), ("zst", packed)):
                tools += [
                    (f"dd {label} + read-back", dd(src, label == "zst")),
                    (f"bmaptool {label}", bmaptool(src)),
                    (f"fleet {label} --no-verify", fleet(src, "--no-verify")),
                    (f"fleet {label} + read-back", fleet(src)),
                ]
            for turn in range(runs):
                for name, work_fn in tools:
                    bench.run(name, work_fn)
                print(f"  run {turn + 1}/{runs} done (load {load()})", flush=True)
            report(bench)
            print(f"load average at end: {load()}")
        finally:
            subprocess.run(["losetup", "-d", node], check=False)


def report(bench: Bench) -> None:
    print("\nmedian wall time per run (all runs in brackets):")
    for name, times in bench.times.items():
        extra = ""
        if name in bench.inner:
            write = statistics.median(w for w, _ in bench.inner[name])
            verify = statistics.median(v for _, v in bench.inner[name])
            extra = f"   fleet's own: write+sync {write:.2f} s, then read-back {verify:.2f} s"
        runs = ", ".join(f"{t:.2f}" for t in times)
        print(f"  {name:<26} {bench.median(name):6.2f} s  [{runs}]{extra}")
    print(
        "\nverification differs: bmaptool copy checks the image's bytes against the bmap "
        "while reading\nthem and never reads the device back; fleet flash reads every "
        "written range back from\nthe device (O_DIRECT, each range as soon as it is written, "
        "alongside the next writes;\n'then read-back' is what is left after the fsync) and "
        "checks it against the bmap; "
        "dd is followed by a full read-back.\n'--no-verify' is fleet without the "
        "read-back, checking the image against the bmap like bmaptool."
    )
    print("\nratios (medians): fleet/bmaptool <= 1.00 and dd/fleet >= 4.0 are the targets")
    for label in ("raw", "zst"):
        dd = bench.median(f"dd {label} + read-back")
        bmaptool = bench.median(f"bmaptool {label}")
        for kind in ("+ read-back", "--no-verify"):
            fleet = bench.median(f"fleet {label} {kind}")
            print(
                f"  {label} fleet {kind:<12} fleet/bmaptool {fleet / bmaptool:5.2f}   "
                f"dd/fleet {dd / fleet:5.2f}"
            )


if __name__ == "__main__":
    main()
