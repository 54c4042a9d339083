"""TFTP throughput of `fleet serve` beside tftpd-hpa and dnsmasq's TFTP server, on
loopback: the same file, the same client (curl), 1 and 8 clients at once, blksize 512
and 1468. Each server listens on 127.0.0.1:69 in turn. curl has no windowsize, so
fleet's windowsize 16 is measured with the scripted client of the tests
(tests/integration/tftp_client.py), beside the same client at windowsize 1: that
ratio is the same client's.

Then the client where lock-step TFTP loses most: U-Boot on the virtual board (QEMU virt,
its NIC on a tap in a network namespace, the servers on 192.0.2.1 inside it) fetching a
kernel-sized file (--uboot-mib) from each server, blksize 1468, with tftpwindowsize 1
from every server and 16 from fleet's; U-Boot prints each transfer's rate itself.

Run: .venv/bin/python bench/tftp.py [--mib 64] [--runs 3] [--uboot-mib 16]. Needs root,
dnsmasq, curl, mtools and QEMU with u-boot-qemu (make deps) and tftpd-hpa, which make
deps leaves out: its package starts a TFTP daemon on every address (apt install
tftpd-hpa; systemctl disable --now tftpd-hpa).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import re
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

from fleet.boards import get_profile  # noqa: E402
from fleet.lab.netbooted import SERVER, NetLab, board_argv  # noqa: E402

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


def servers(
    root: Path, release: Path, trust: Path, work: Path, bind: str = "127.0.0.1"
) -> dict[str, list[str]]:
    return {
        "tftpd-hpa": ["in.tftpd", "-L", "-s", str(root), "-a", f"{bind}:69"],
        "dnsmasq": [
            "dnsmasq",
            "-k",
            "--port=0",
            "--enable-tftp",
            f"--tftp-root={root}",
            f"--listen-address={bind}",
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
            bind,
            "--port",
            "69",
        ],
    }


UBOOT_RATE = re.compile(r"^\s+([\d.]+) (KiB|MiB)/s\s*$", re.M)


def uboot_rates(command: list[str], work: Path, window: int, runs: int) -> list[float]:
    """U-Boot's own MiB/s for ``runs`` fetches of NAME from the server ``command`` runs,
    both inside a namespace, the board on its tap."""
    net = NetLab("fleet-bench-nb", "fbtap0").up()
    folder = work / f"uboot-{window}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    disk = folder / "disk.img"
    disk.write_bytes(bytes(1 << 20))
    fetches = "; ".join(["tftpboot ${kernel_addr_r} " + NAME] * runs)
    profile = get_profile("qemu-virt-arm64")
    env = ("tftpblocksize=1468", f"tftpwindowsize={window}")
    server = subprocess.Popen(
        net.inside(*command), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    board = None
    try:
        time.sleep(1)  # in.tftpd and dnsmasq say nothing when they are ready
        board = subprocess.Popen(
            net.inside(*board_argv(profile, net, folder, disk, env, bootcmd=fetches)),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        console = folder / "console.log"
        deadline = time.monotonic() + 60 + runs * 60
        while time.monotonic() < deadline:
            text = console.read_text(errors="replace") if console.exists() else ""
            if text.count("Bytes transferred") >= runs:
                found = UBOOT_RATE.findall(text)
                return [float(v) / (1024 if unit == "KiB" else 1) for v, unit in found]
            if "Retry count exceeded" in text or "TFTP error" in text:
                raise SystemExit(f"U-Boot's fetch failed:\n{text[-2000:]}")
            time.sleep(0.2)
        raise SystemExit("U-Boot did not finish its fetches")
    finally:
        for proc in (board, server):
            if proc is not None:
                proc.terminate()
                proc.wait(10)
        net.down()


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
    parser.add_argument("--uboot-mib", type=int, default=16)
    parser.add_argument("--uboot-only", action="store_true", help="only the U-Boot part")
    args = parser.parse_args()
    for tool in ("in.tftpd", "dnsmasq", "curl", "mcopy"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing (apt install tftpd-hpa dnsmasq-base curl mtools)")
    work = Path(tempfile.mkdtemp(prefix="fleet-bench-tftp-"))
    work.chmod(0o755)  # dnsmasq serves as its own unprivileged user
    try:
        if args.uboot_only:
            uboot(work, args.uboot_mib, args.runs)
            return
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
        uboot(work, args.uboot_mib, args.runs)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def uboot(work: Path, mib: int, runs: int) -> None:
    files = work / "uboot-files"
    files.mkdir()
    boot_root, release, trust = prepare(files, mib)
    print(f"\nU-Boot on QEMU virt over a tap, {mib} MiB file, blksize 1468, medians of {runs}")
    rates: dict[tuple[str, int], float] = {}
    configs = [(name, 1) for name in ("tftpd-hpa", "dnsmasq", "fleet")] + [("fleet", 16)]
    commands = servers(boot_root, release, trust, work, bind=SERVER)
    for name, w in configs:
        found = uboot_rates(commands[name], work, w, runs)
        rates[(name, w)] = statistics.median(found)
        print(f"  {name:<10} tftpwindowsize {w:>2}: {rates[(name, w)]:7.1f} MiB/s  {found}")
    peer = max(rates[("tftpd-hpa", 1)], rates[("dnsmasq", 1)])
    print("ratios to the faster peer (U-Boot)")
    print(f"  fleet, windowsize 1:  {rates[('fleet', 1)] / peer:.2f} (target >= 0.8)")
    print(f"  fleet, windowsize 16: {rates[('fleet', 16)] / peer:.2f} (target >= 3)")


if __name__ == "__main__":
    main()
