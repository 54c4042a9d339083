"""Flash 1, 2 and 4 loop targets in one fleet run, beside the same number of
`bmaptool copy` runs one after another, and print wall time, aggregate throughput,
the controller's CPU time per GiB written, and the ratios.

The image is bench/flash.py's: 1 GiB with 25% data (256 MiB mapped), raw and zstd.
fleet reads every written range back from each target (O_DIRECT) and checks it
against the bmap; bmaptool checks the image against the bmap while reading it and never
reads the device back, so fleet also runs with --no-verify, the like-for-like figure.
CPU time is the user + system time of the flashing processes (getrusage of children),
not the loop devices' kernel workers, which would be a card reader's hardware.

The loop devices' backing files are on tmpfs by default (--backing /dev/shm): each
target then stands alone, as cards in separate readers do. With --backing on a disk
folder, all the targets share that one disk, and its write speed caps the aggregate.

Targets: CPU time per GiB flat as N grows, and 4 targets in less than half the time of
4 bmaptool runs in sequence. The page cache is dropped before every run; each case runs
--runs times (3 by default) and the median is printed. Needs root.
Run: .venv/bin/python bench/flash_many.py [--runs N] [--counts 1,2,4]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from flash import FLEET, SIZE, drop_caches, load, make_image

from fleet.bmap import load_bmap, write_bmap

GiB = 1 << 30


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Case:
    walls: list[float] = field(default_factory=list)
    cpus: list[float] = field(default_factory=list)

    def wall(self) -> float:
        return statistics.median(self.walls)

    def cpu(self) -> float:
        return statistics.median(self.cpus)


def timed(case: Case, work: Callable[[], None]) -> None:
    drop_caches()
    cpu, start = children_cpu(), time.monotonic()
    work()
    case.walls.append(time.monotonic() - start)
    case.cpus.append(children_cpu() - cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per case (median printed)")
    parser.add_argument("--counts", default="1,2,4", help="numbers of targets")
    parser.add_argument(
        "--backing", type=Path, default=Path("/dev/shm"), help="folder for the targets' files"
    )
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    with tempfile.TemporaryDirectory(prefix="fleet-bench-many-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        image, bmap_path, packed = work / "disk.img", work / "disk.img.bmap", work / "disk.img.zst"
        make_image(image)
        write_bmap(image, bmap_path)
        subprocess.run(["zstd", "-q", "-1", "-T0", str(image), "-o", str(packed)], check=True)
        mapped = load_bmap(bmap_path).mapped_bytes
        nodes = []
        targets = Path(tempfile.mkdtemp(prefix="fleet-bench-many-", dir=args.backing))
        try:
            for i in range(max(counts)):
                backing = targets / f"target{i}.img"
                with open(backing, "wb") as handle:
                    handle.truncate(SIZE)
                nodes.append(
                    subprocess.run(
                        ["losetup", "--find", "--show", str(backing)],
                        check=True,
                        capture_output=True,
                        text=True,
                    ).stdout.strip()
                )
            print(f"targets' backing files in {args.backing}")
            run_cases(image, packed, bmap_path, nodes, counts, mapped, args.runs)
        finally:
            for node in nodes:
                subprocess.run(["losetup", "-d", node], check=False)
            shutil.rmtree(targets, ignore_errors=True)


def run_cases(
    image: Path,
    packed: Path,
    bmap: Path,
    nodes: list[str],
    counts: list[int],
    mapped: int,
    runs: int,
) -> None:
    print(f"1 GiB image, {mapped >> 20} MiB mapped, targets {', '.join(nodes)}, {runs} runs")
    print(f"load average at start: {load()} ({os.cpu_count()} CPUs)", flush=True)
    cases: dict[tuple[str, str, int], Case] = {}

    def fleet(src: Path, targets: list[str], *extra: str) -> Callable[[], None]:
        def run() -> None:
            devices = [a for node in targets for a in ("-d", node)]
            cmd = [FLEET, "flash", str(src), *devices, "--yes", "--json", "--bmap", str(bmap)]
            done = subprocess.run([*cmd, *extra], check=True, capture_output=True, text=True)
            if len(targets) > 1:
                assert json.loads(done.stdout)["ok"] is True

        return run

    def bmaptool(src: Path, targets: list[str]) -> Callable[[], None]:
        def run() -> None:
            for node in targets:  # one after another, as a desk does it with bmaptool
                cmd = ["bmaptool", "copy", "--bmap", str(bmap), str(src), node]
                subprocess.run(cmd, check=True, capture_output=True)

        return run

    for turn in range(runs):
        for label, src in (("raw", image), ("zst", packed)):
            for n in counts:
                targets = nodes[:n]
                for tool, work in (
                    ("bmaptool x N in sequence", bmaptool(src, targets)),
                    ("fleet, N at once, read-back", fleet(src, targets)),
                    ("fleet, N at once, --no-verify", fleet(src, targets, "--no-verify")),
                ):
                    timed(cases.setdefault((label, tool, n), Case()), work)
        print(f"  run {turn + 1}/{runs} done (load {load()})", flush=True)
    report(cases, counts, mapped)
    print(f"load average at end: {load()}")


def report(cases: dict[tuple[str, str, int], Case], counts: list[int], mapped: int) -> None:
    print("\nmedians: wall time, aggregate throughput, CPU time per GiB written")
    for (label, tool, n), case in cases.items():
        written = n * mapped
        print(
            f"  {label} {tool:<30} N={n}: {case.wall():6.2f} s  "
            f"{written / case.wall() / (1 << 20):7.1f} MiB/s  "
            f"{case.cpu() / (written / GiB):5.2f} CPU-s/GiB"
        )
    print("\nratios: fleet N at once / bmaptool N in sequence (target for N=4: < 0.50)")
    for label in ("raw", "zst"):
        for n in counts:
            peer = cases[(label, "bmaptool x N in sequence", n)].wall()
            ours = cases[(label, "fleet, N at once, read-back", n)].wall()
            like = cases[(label, "fleet, N at once, --no-verify", n)].wall()
            print(
                f"  {label} N={n}: with read-back {ours / peer:.2f}, "
                f"--no-verify {like / peer:.2f}"
            )
    print("\nfleet's CPU time per GiB as N grows (target: flat), with read-back:")
    for label in ("raw", "zst"):
        per = [
            cases[(label, "fleet, N at once, read-back", n)].cpu() / (n * mapped / GiB)
            for n in counts
        ]
        steps = ", ".join(f"N={n}: {p:.2f}" for n, p in zip(counts, per, strict=True))
        print(f"  {label}: {steps}  (N={counts[-1]} / N={counts[0]}: {per[-1] / per[0]:.2f})")


if __name__ == "__main__":
    sys.exit(main())
