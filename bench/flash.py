"""Flash a 1 GiB image with about 25% data onto a loop device with dd, bmaptool and
fleet, each with its verification, raw and zstd-compressed; print times and ratios.

dd writes every byte (conv=fsync) and is verified by reading the device back and
comparing SHA-256 with the image's; bmaptool copy checks its bmap's range hashes;
fleet flash writes the bmap's ranges and reads them back with O_DIRECT.
Needs root (loop devices). Run: .venv/bin/python bench/flash.py
"""

from __future__ import annotations

import hashlib
import os
import random
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


def sha256_of(path: str, length: int, direct: bool = False) -> str:
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


def timed(name: str, work: Callable[[], None], results: dict[str, float]) -> None:
    drop_caches()
    start = time.monotonic()
    work()
    results[name] = time.monotonic() - start
    print(f"  {name:<28} {results[name]:6.2f} s", flush=True)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="fleet-bench-flash-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        image = work / "disk.img"
        make_image(image)
        write_bmap(image, work / "disk.img.bmap")
        subprocess.run(["zstd", "-q", "-1", "-T0", str(image), "-o", str(work / "disk.img.zst")])
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
        results: dict[str, float] = {}
        try:
            print(f"1 GiB image, 25% data, target {node}")

            def dd(src: str, decompress: bool) -> Callable[[], None]:
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
                return lambda: subprocess.run(
                    ["bmaptool", "copy", "--bmap", str(work / "disk.img.bmap"), str(src), node],
                    check=True,
                    capture_output=True,
                )

            def fleet(src: Path) -> Callable[[], None]:
                return lambda: subprocess.run(
                    [FLEET, "flash", str(src), "-d", node, "--yes"], check=True, capture_output=True
                )

            for label, src in (("raw", image), ("zst", work / "disk.img.zst")):
                timed(f"dd {label} + verify", dd(str(src), label == "zst"), results)
                timed(f"bmaptool {label}", bmaptool(src), results)
                timed(f"fleet {label} (verified)", fleet(src), results)
            print()
            for label in ("raw", "zst"):
                f = results[f"fleet {label} (verified)"]
                print(
                    f"  {label}: fleet vs bmaptool {results[f'bmaptool {label}'] / f:.2f}x faster, "
                    f"fleet vs dd {results[f'dd {label} + verify'] / f:.2f}x faster"
                )
        finally:
            subprocess.run(["losetup", "-d", node], check=False)


if __name__ == "__main__":
    main()
