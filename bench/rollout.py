"""A rollout's cost as the fleet grows, on simulated boards (docs/lab.md).

For 1, 10, 100 and 300 boards (each a real dropbear with the board's agent): the wall
time of `fleet rollout` to a small signed release in one wave, the controller's peak
memory (its own RSS high-water mark, from wait4), and the ratios to one board. Beside it
in the same run, the peer: a plain loop of one `fleet update` per board, one after the
other, for the 10-board fleet (what a shell script over ssh does).

Targets (issue 13): 100 boards within 3x the time of one; 300 boards within 200 MiB.
It also prints the CPU the controller and the boards spent: on a machine with few cores
the boards' own work (their SSH servers, agents, reboots) bounds the wall time.

Usage: .venv/bin/python bench/rollout.py [--sizes 1,10,100,300] [--parallel 100]
Needs root (simulated boards: loop devices, chroot, namespaces).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fleet.lab.simrelease import make_release  # noqa: E402

FLEET = [sys.executable, "-m", "fleet.cli.main"]


def fleet(*args: str | Path, env: dict[str, str]) -> str:
    proc = subprocess.run(
        [*FLEET, *map(str, args)], capture_output=True, text=True, env=env, check=False
    )
    if proc.returncode != 0:
        raise SystemExit(f"fleet {' '.join(map(str, args))}: {proc.stderr.strip()}")
    return proc.stdout


def machine_cpu() -> float:
    """CPU seconds this machine has spent (all processes, user + system)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    return (int(fields[0]) + int(fields[1]) + int(fields[2])) / os.sysconf("SC_CLK_TCK")


def timed_rollout(args: list[str], env: dict[str, str]) -> tuple[float, int, float, dict]:  # type: ignore[type-arg]
    """Wall seconds, peak RSS in KiB, CPU seconds and the JSON report of one rollout."""
    started = time.monotonic()
    proc = subprocess.Popen(
        [*FLEET, "rollout", *args, "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"rollout exited {proc.returncode}: {out[-2000:]}")
    return seconds, usage.ru_maxrss, usage.ru_utime + usage.ru_stime, json.loads(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,10,100,300")
    parser.add_argument("--parallel", type=int, default=100)
    options = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/rollout.py needs root (simulated boards)", file=sys.stderr)
        return 1
    sizes = [int(x) for x in options.sizes.split(",")]
    work = Path(tempfile.mkdtemp(prefix="fleet-bench-rollout-"))
    os.environ["FLEET_LAB_DIR"] = str(work / "lab")
    env = dict(os.environ)
    from fleet import lab
    fleet("keys", "generate", "--out", work / "keys", "--name", "release", env=env)
    key, pub = work / "keys/release.sec", work / "keys/release.pub"
    release = make_release(work / "r2", key, 2, size=256 * 1024)
    rows = []
    try:
        for count in sizes:
            prefix = f"b{count}"
            started = time.monotonic()
            fleet("lab", "up", "--sim", "--count", str(count), "--name", prefix, "--trust", pub,
                  "--timeout", "600", env=env)
            up = time.monotonic() - started
            inventory = work / f"{prefix}.toml"
            fleet("lab", "inventory", "--out", inventory, "--prefix", prefix, env=env)
            before = machine_cpu()
            seconds, rss, cpu, report = timed_rollout(
                [str(release), "--inventory", str(inventory), "--trust", str(pub),
                 "--waves", "100%", "--parallel", str(options.parallel)],
                env,
            )
            boards_cpu = machine_cpu() - before - cpu
            updated = report["counts"].get("updated", 0)
            rows.append((count, up, seconds, rss, updated))
            print(f"{count:4d} boards: up in {up:6.1f} s; rollout {seconds:6.1f} s, "
                  f"controller peak {rss / 1024:6.1f} MiB, CPU {cpu:5.1f} s "
                  f"(boards {boards_cpu:5.1f} s), "
                  f"{updated}/{count} updated", flush=True)
            if count == 10:
                # The peer on the same boards: one `fleet update` after another (a shell
                # loop over ssh); first back to release 1's state is not possible (the
                # floor rose), so it runs on a fresh set of ten.
                fleet("lab", "up", "--sim", "--count", "10", "--name", "loop", "--trust", pub,
                      env=env)
                started = time.monotonic()
                for n in range(1, 11):
                    fleet("update", f"loop-{n}", release, "--trust", pub, env=env)
                loop = time.monotonic() - started
                print(f"  peer: a loop of 10 fleet update: {loop:.1f} s; the rollout is "
                      f"{loop / seconds:.1f}x faster", flush=True)
            for board in lab.list_boards():
                lab.down(board.name, remove=True)
    finally:
        for board in lab.list_boards():
            lab.down(board.name, remove=True)
        subprocess.run(["rm", "-rf", str(work)], check=False)
    base = rows[0]
    print("\nboards  rollout s  x one board  controller MiB  x one board")
    for count, _, seconds, rss, _ in rows:
        print(f"{count:6d}  {seconds:9.1f}  {seconds / base[2]:11.2f}  {rss / 1024:14.1f}  "
              f"{rss / base[3]:11.2f}")
    for count, _, seconds, rss, _ in rows:
        if count == 100:
            verdict = "met" if seconds <= 3 * base[2] else "NOT met"
            ratio = seconds / base[2]
            print(f"target: 100 boards within 3x one board's time: {ratio:.2f}x, {verdict}")
        if count == 300:
            verdict = "met" if rss / 1024 <= 200 else "NOT met"
            mib = rss / 1024
            print(f"target: 300 boards within 200 MiB of controller memory: {mib:.0f} MiB, "
                  f"{verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
