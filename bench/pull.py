"""What pull mode costs the origin, on boards that poll (docs/pull.md).

200 boards, each the board's own pull script (fleet/device/pull) in a simulated board's
tree on this machine (fleet.lab.simtree, as `fleet lab up --sim` makes them, without
their SSH servers), poll a folder store behind a real nginx on loopback. The store
offers a release at 0%, so every board checks the documents and stays. nginx's access
log gives the requests and bytes at the origin: for the first poll (timestamp, targets
and its signature) and for the polls after it (the timestamp alone: a board keeps the
targets document it checked). The peer, in the same run, is the same script made to
fetch everything on every poll (its kept targets removed first): what a client without
the timestamp's indirection asks for.

From the steady-state figure it prints the estimate for 100,000 boards at the chosen
interval and at Mender's default 30-minute poll.

Usage: .venv/bin/python bench/pull.py [--boards 200] [--polls 3] [--interval 300]
Needs root (chroot) and nginx (make deps).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fleet import trust  # noqa: E402
from fleet.lab import simtree  # noqa: E402
from fleet.lab.simrelease import make_release  # noqa: E402
from fleet.pull import nginx  # noqa: E402
from fleet.pull import publish as pub  # noqa: E402
from fleet.pull.store import DirStore  # noqa: E402

FLEET_SIZE = 100_000
MENDER_POLL_S = 1800


def make_boards(base: Path, count: int, keys: Path, url: str) -> list[Path]:
    template = simtree.build_template(base / "template")
    trees = []
    for n in range(1, count + 1):
        tree = base / f"board-{n}"
        simtree.board_tree(template, tree, board="qemu-virt-arm64", hostname=f"board-{n}",
                           port=0, pubkeys=[keys / "release.pub"], authorized="")
        (tree / "etc/fleet/pull-keys").mkdir(exist_ok=True)
        shutil.copyfile(keys / "timestamp.pub", tree / "etc/fleet/pull-keys/timestamp.pub")
        (tree / "etc/fleet/app.env").write_bytes(simtree.shell_env({
            "FLEET_APP_NAME": "hello", "FLEET_APP_VERSION": "1.0.0", "FLEET_RELEASE": "1",
            "FLEET_HEALTH_TIMEOUT": "60", "FLEET_APP_UID": "1000"}))
        (tree / "proc/cmdline").write_text("console=ttyAMA0 fleet.slot=A\n")
        (tree / "proc/sys/kernel/random/boot_id").write_text("0\n")
        (tree / "boot/firmware/fleet").mkdir(parents=True, exist_ok=True)
        (tree / "boot/firmware/fleet/pull").write_text(f"url={url}\ngroup=lobby\n")
        trees.append(tree)
    return trees


def poll(tree: Path, forget: bool) -> int:
    if forget:
        for name in ("targets.json", "targets-version"):
            (tree / "data/fleet/pull" / name).unlink(missing_ok=True)
    proc = subprocess.run(["chroot", str(tree), "/etc/fleet/pull", "once"],
                          capture_output=True, check=False)
    return proc.returncode


def log_figures(log: Path, start: int) -> tuple[int, int]:
    lines = log.read_text().splitlines()[start:]
    return len(lines), sum(int(line.split()[-1]) for line in lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--boards", type=int, default=200)
    parser.add_argument("--polls", type=int, default=3)
    parser.add_argument("--interval", type=int, default=300, help="the boards' poll interval")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench/pull.py needs root (chroot)")
    with tempfile.TemporaryDirectory(prefix="fleet-bench-pull.") as tmp:
        base = Path(tmp)
        keys = base / "keys"
        trust.generate_key(keys, "release")
        trust.generate_key(keys, "timestamp")
        release = make_release(base / "r2", keys / "release.sec", 2, size=64 * 1024)
        store = base / "store"
        store.mkdir()
        pub.publish(DirStore(store), release, "lobby", 0,
                    [trust.load_secret_key(keys / "release.sec")],
                    trust.load_secret_key(keys / "timestamp.sec"), 30 * 86400, 86400)
        with nginx.serving(store, base / "nginx") as web:
            trees = make_boards(base, args.boards, keys, web.url())
            rows = []
            for label, forget in (("fleet pull", False), ("peer: no kept targets", True)):
                for tree in trees:
                    shutil.rmtree(tree / "data/fleet/pull", ignore_errors=True)
                figures = []
                started = time.monotonic()
                for _ in range(args.polls):
                    mark = len(web.access_log.read_text().splitlines())
                    with cf.ThreadPoolExecutor(8) as pool:
                        codes = list(pool.map(poll, trees, [forget] * len(trees)))
                    if any(codes):
                        raise SystemExit(f"{label}: a poll failed ({sorted(set(codes))})")
                    figures.append(log_figures(web.access_log, mark))
                wall = time.monotonic() - started
                rows.append((label, figures, wall))
    n = args.boards
    print(f"{n} boards, {args.polls} polls each, nginx on loopback")
    for label, figures, wall in rows:
        first, rest = figures[0], figures[1:]
        steady_req = sum(f[0] for f in rest) / (n * len(rest))
        steady_bytes = sum(f[1] for f in rest) / (n * len(rest))
        print(f"  {label:22} first poll {first[0] / n:.1f} req, {first[1] / n:.0f} B per board;"
              f" after: {steady_req:.2f} req, {steady_bytes:.0f} B per board per poll"
              f" ({wall:.1f} s for {n * args.polls} polls)")
    ours = sum(f[1] for f in rows[0][1][1:]) / (n * (args.polls - 1))
    peer = sum(f[1] for f in rows[1][1][1:]) / (n * (args.polls - 1))
    ours_req = sum(f[0] for f in rows[0][1][1:]) / (n * (args.polls - 1))
    peer_req = sum(f[0] for f in rows[1][1][1:]) / (n * (args.polls - 1))
    print(f"  ratio peer/fleet: {peer_req / ours_req:.1f}x requests, {peer / ours:.1f}x bytes")
    for interval, who in ((args.interval, f"fleet, every {args.interval} s"),
                          (MENDER_POLL_S, "fleet at Mender's default 30 min poll")):
        rate = FLEET_SIZE / interval
        per_day = FLEET_SIZE * 86400 / interval * ours / 1e9
        print(f"  {FLEET_SIZE} boards, {who}: {rate:.0f} req/s, {per_day:.2f} GB/day of polls;"
              f" behind a CDN caching the timestamp 30 s: about {1 / 30:.3f} req/s per edge"
              f" at the origin")


if __name__ == "__main__":
    main()
