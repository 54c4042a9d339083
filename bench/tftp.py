"""TFTP throughput of `fleet serve` beside tftpd-hpa and dnsmasq's TFTP server, on
loopback: the same file, the same client (curl), 1 and 8 clients at once, blksize 512
and 1468. Each server listens on 127.0.0.1:69 in turn. curl has no windowsize, so
fleet's windowsize 16 is measured with the scripted client of the tests
(tests/integration/tftp_client.py), beside the same client at windowsize 1: that
ratio is the same client's.

Not measured here yet: U-Boot on the virtual board fetching the kernel over a tap in a
namespace, where lock-step TFTP loses most (docs/netboot.md).

Run: .venv/bin/python bench/tftp.py [--mib 64] [--runs 3]. Needs root, dnsmasq, curl and
mtools (make deps) and tftpd-hpa, which make deps leaves out: its package starts a TFTP
daemon on every address (apt install tftpd-hpa; systemctl disable --now tftpd-hpa).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests/integration"), str(ROOT / "tests/unit")]
from tftp_client import Client  # noqa: E402
from trust_fixtures import make_release  # noqa: E402

FLEET = str(Path(sys.executable).parent / "fleet")
MTOOLS = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
NAME = "Image"


def prepare(work: Path, mib: int) -> tuple[Path, Path, Path]:
    data = os.urandom(mib << 20)
    root = work / "root"
    root.mkdir()
    (root / NAME).write_bytes(data)
    fat = work / "boot.vfat"
    subprocess.run(
        ["mkfs.vfat", "-C", str(fat), str((mib + 16) << 10)], check=True, capture_output=True
    )
    subprocess.run(
        ["mcopy", "-i", str(fat), str(root / NAME), f"::/{NAME}"], env=MTOOLS, check=True
    )
    make_release(work / "release", boot=fat.read_bytes(), rootfs=b"r" * 4096)
    subprocess.run(
        [FLEET, "keys", "generate", "--out", str(work / "keys"), "--name", "b"],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [FLEET, "sign", str(work / "release"), "--key", str(work / "keys/b.sec")],
        check=True,
        capture_output=True,
    )
    return root, work / "release", work / "keys/b.pub"


def servers(root: Path, release: Path, trust: Path, work: Path) -> dict[str, list[str]]:
    return {
        "tftpd-hpa": ["in.tftpd", "-L", "-s", str(root), "-a", "127.0.0.1:69"],
        "dnsmasq": [
            "dnsmasq",
            "-k",
            "--port=0",
            "--enable-tftp",
            f"--tftp-root={root}",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--conf-file=/dev/null",
            f"--pid-file={work / 'dnsmasq.pid'}",
        ],
        "fleet": [
            FLEET,
            "serve",
            "--release",
            str(release),
            "--trust",
            str(trust),
            "--bind",
            "127.0.0.1",
            "--port",
            "69",
        ],
    }


def wait_ready(size: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        r = subprocess.run(
            ["curl", "-s", "-r", "0-0", "tftp://127.0.0.1/cmdline-none"], capture_output=True
        )
        if r.returncode in (0, 68):  # 68: TFTP file not found: the server answers
            return
        time.sleep(0.1)
    raise SystemExit("server did not come up")


def curl_fetch(blksize: int, size: int) -> None:
    r = subprocess.run(
        [
            "curl",
            "-s",
            "--tftp-blksize",
            str(blksize),
            "-o",
            "/dev/null",
            "-w",
            "%{size_download}",
            f"tftp://127.0.0.1/{NAME}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if r.returncode != 0 or int(r.stdout or 0) != size:
        raise SystemExit(f"curl failed: {r.returncode} {r.stdout} {r.stderr}")


def timed(clients: int, fetch: Callable[[], None], runs: int) -> float:
    """Median aggregate MiB/s of ``clients`` fetches at once."""
    rates = []
    for _ in range(runs):
        start = time.perf_counter()
        with cf.ThreadPoolExecutor(clients) as pool:
            list(pool.map(lambda _: fetch(), range(clients)))
        rates.append(clients / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    for tool in ("in.tftpd", "dnsmasq", "curl", "mcopy"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing (apt install tftpd-hpa dnsmasq-base curl mtools)")
    work = Path(tempfile.mkdtemp(prefix="fleet-bench-tftp-"))
    work.chmod(0o755)  # dnsmasq serves as its own unprivileged user
    try:
        root, release, trust = prepare(work, args.mib)
        size = args.mib << 20
        results: dict[tuple[str, int, int], float] = {}
        window: dict[int, float] = {}
        print(
            f"{args.mib} MiB file, loopback, medians of {args.runs}; load {os.getloadavg()[0]:.2f}"
        )
        for name, command in servers(root, release, trust, work).items():
            proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                wait_ready(size)
                for blksize in (512, 1468):
                    for clients in (1, 8):
                        rate = timed(clients, lambda b=blksize: curl_fetch(b, size), args.runs)
                        results[(name, blksize, clients)] = rate * args.mib
                        print(
                            f"  {name:<10} curl blksize {blksize:>4}, {clients} at once: "
                            f"{rate * args.mib:7.1f} MiB/s"
                        )
                if name == "fleet":
                    for w in (1, 16):

                        def scripted(w: int = w) -> None:
                            c = Client(69, timeout=10)
                            got = c.fetch(NAME, {"blksize": "1468", "windowsize": str(w)})
                            c.close()
                            if len(got.data) != size:
                                raise SystemExit("scripted client got a short file")

                        window[w] = timed(1, scripted, args.runs) * args.mib
                        print(
                            f"  fleet      scripted client blksize 1468 windowsize {w:>2}: "
                            f"{window[w]:7.1f} MiB/s"
                        )
            finally:
                proc.terminate()
                proc.wait(10)
        print("\nratios: fleet / the faster peer, same client (target >= 0.8)")
        for blksize in (512, 1468):
            for clients in (1, 8):
                peer = max(results[(p, blksize, clients)] for p in ("tftpd-hpa", "dnsmasq"))
                fleet = results[("fleet", blksize, clients)]
                print(f"  blksize {blksize:>4}, {clients} at once: {fleet / peer:.2f}")
        print(f"  windowsize 16 / 1 (scripted client, blksize 1468): {window[16] / window[1]:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
