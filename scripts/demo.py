"""`make demo`: the main job end to end on the virtual lab, with the fleet command as a
user types it: build the example app for ARM, sign it, flash it onto three cards at once
(loop devices), flash and boot a virtual board, update it A/B to a new release, push a
broken release and watch the automatic rollback, netboot the new release on a second
virtual board from `fleet serve`, roll the release out to simulated boards in waves, and
publish it for simulated boards that pull it themselves from a folder behind nginx.
Each step prints its command; a short summary closes the run.

Work goes to out/demo/ (keys, app copy, builds); the demo board stays up afterwards so
you can look around: `fleet lab ssh demo`, `fleet lab console demo --log`,
`fleet lab down demo`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from fleet.release import load_manifest

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / "out" / "demo"
FLEET = [sys.executable, "-m", "fleet.cli.main"]
BOARD = "qemu-virt-arm64"
NAME = "demo"

summary: list[tuple[str, str, str]] = []


def step(
    title: str, *args: str | Path, json_out: bool = False, expect: int = 0
) -> subprocess.CompletedProcess[str]:
    shown = " ".join(str(a) for a in args)
    print(f"\n== {title}\n$ fleet {shown}", flush=True)
    started = time.monotonic()
    proc = subprocess.run(
        [*FLEET, *map(str, args)],
        text=True,
        check=False,
        stdout=subprocess.PIPE if json_out else None,
    )
    seconds = time.monotonic() - started
    if proc.returncode != expect:
        summary.append((title, "FAILED", f"exit {proc.returncode}, {seconds:.1f} s"))
        finish(1)
    summary.append((title, "ok", f"{seconds:.1f} s"))
    return proc


def build(title: str, app: Path, out: str, *extra: str) -> Path:
    """`fleet build` of ``app`` for the demo board, signed; returns its release folder."""
    step(
        title,
        "build",
        "--board",
        BOARD,
        "--project",
        app,
        "--out",
        WORK / out,
        "--key",
        WORK / "keys" / "release.sec",
        # A development image, so that `fleet lab ssh demo` gets a shell afterwards.
        "--dev",
        *extra,
    )
    return WORK / out / "release"


def update(title: str, release: Path, expect: int) -> dict[str, object]:
    """`fleet update` with --json; the outcome (updated, rolled-back...) goes to the summary."""
    proc = step(
        title,
        "update",
        NAME,
        release,
        "--trust",
        WORK / "keys" / "release.pub",
        "--json",
        json_out=True,
        expect=expect,
    )
    result: dict[str, object] = json.loads(proc.stdout)
    outcome = f"{result['outcome']}" + (f": {result['reason']}" if result["reason"] else "")
    print(f"{NAME}: {outcome}; runs {result['running_version']} from slot {result['running_slot']}")
    title_, _, seconds = summary.pop()
    # A delta against the board's running slot where the host holds it (docs/delta.md).
    full = sum(p.size for p in load_manifest(release).payloads)
    sent = int(str(result["bytes_sent"]))
    how = f"{result['method'] or 'nothing'} sent, {sent} of {full} bytes ({100 * sent / full:.1f}%)"
    summary.append(
        (
            title_,
            str(result["outcome"]),
            f"{seconds}; runs {result['running_version']} from slot "
            f"{result['running_slot']}"
            + (f" ({result['reason']})" if result["reason"] else "")
            + f"; {how}",
        )
    )
    return result


def http_get(port: int, path: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
                return reply.read().decode().strip()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def app_copy(version: str, release: int, broken: bool = False) -> Path:
    folder = WORK / f"hello-{version}"
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(
        REPO / "examples" / "hello-c", folder, ignore=shutil.ignore_patterns("fleet.lock")
    )
    toml = folder / "fleet.toml"
    text = (
        toml.read_text()
        .replace('version = "1.0.0"', f'version = "{version}"')
        .replace("release = 1\n", f"release = {release}\n")
    )
    if broken:
        # A release whose app dies at start: its health check can never pass.
        text = text.replace('command = "/app/bin/hello-c"', 'command = "/bin/false"')
        text = text.replace("timeout = 60", "timeout = 20")
    toml.write_text(text)
    return folder


def finish(code: int) -> None:
    print("\n== summary")
    width = max(len(t) for t, _, _ in summary) if summary else 10
    for title, outcome, detail in summary:
        print(f"  {title:<{width}}  {outcome:<8} {detail}")
    if code == 0:
        print(f"\nThe board is still running: fleet lab ssh {NAME}   |   fleet lab down {NAME}")
    sys.exit(code)


def main() -> None:
    WORK.mkdir(parents=True, exist_ok=True)
    subprocess.run([*FLEET, "lab", "down", NAME], capture_output=True, check=False)
    if not (WORK / "keys" / "release.sec").exists():
        step("make a release key", "keys", "generate", "--out", WORK / "keys", "--name", "release")
    release1 = build("build hello-c 1.0.0 for ARM", app_copy("1.0.0", 1), "v1")
    step(
        "verify the signed release",
        "verify",
        release1,
        "--trust",
        WORK / "keys" / "release.pub",
        "--board",
        BOARD,
    )
    flash_cards(WORK / "v1" / "disk.img")
    up = step(
        "flash and boot a virtual board",
        "lab",
        "up",
        "--board",
        BOARD,
        "--disk",
        WORK / "v1" / "disk.img",
        "--name",
        NAME,
        "--json",
        json_out=True,
    )
    board = json.loads(up.stdout)
    version = http_get(board["app_port"], "/version")
    health = http_get(board["app_port"], "/health")
    summary.append(("app answers on the board", "ok", f"/version {version}, /health {health}"))
    print(f"\napp on the board: /version -> {version}, /health -> {health}")

    # --netboot: 2.0.0 is also netbooted on a second board below.
    release2 = build("build hello-c 2.0.0, netbootable", app_copy("2.0.0", 2), "v2", "--netboot")
    update("update the board to 2.0.0 (A/B)", release2, expect=0)
    version = http_get(board["app_port"], "/version")
    summary.append(("app answers after the update", "ok", f"/version {version}"))

    release3 = build(
        "build a broken 3.0.0 (its app dies at start)", app_copy("3.0.0", 3, broken=True), "v3"
    )
    update("push the broken release", release3, expect=10)
    version = http_get(board["app_port"], "/version")
    summary.append(("app answers after the rollback", "ok", f"/version {version}"))
    netboot(release2)
    rollout(release2)
    pull(release2)
    finish(0)


def netboot(release: Path) -> None:
    """2.0.0 netbooted on a second virtual board whose disk holds 1.0.0: the app it runs
    came over TFTP, was checked by the board, and its disk is shown untouched."""
    proc = step(
        "netboot 2.0.0 on a board whose disk holds 1.0.0",
        "lab",
        "netboot",
        release,
        "--trust",
        WORK / "keys" / "release.pub",
        "--disk",
        WORK / "v1" / "disk.img",
        "--json",
        json_out=True,
    )
    result = json.loads(proc.stdout)
    disk = "untouched" if result["disk_unchanged"] else "WRITTEN"
    detail = f"/version {result['version']} in {result['seconds']} s, disk {disk}"
    summary.append(("netbooted board's app", "ok", detail))
    print(f"netbooted board: {detail}")


SIMS = 8
CARDS = 3


def flash_cards(image: Path) -> None:
    """The image onto three "cards" at once (loop devices standing in for SD cards in
    readers), each read back and given its own hostname."""
    import contextlib

    nodes: list[str] = []
    try:
        for n in range(1, CARDS + 1):
            backing = WORK / f"card{n}.img"
            with open(backing, "wb") as handle:
                handle.truncate(image.stat().st_size)
            nodes.append(
                subprocess.run(
                    ["losetup", "--find", "--show", str(backing)],
                    check=True, capture_output=True, text=True,
                ).stdout.strip()
            )
        devices = [a for node in nodes for a in ("--device", node)]
        proc = step(f"flash {CARDS} cards at once, each read back, named kiosk-01..03", "flash",
                    image, *devices, "--yes", "--hostname", "kiosk-{n:02}", "--json",
                    json_out=True)
        report = json.loads(proc.stdout)
        title, _, seconds = summary.pop()
        names = ", ".join(f"{t['hostname']} verified" for t in report["targets"] if t["verified"])
        summary.append((title, "ok" if report["ok"] else "FAILED", f"{names}; {seconds}"))
    finally:
        for node in nodes:
            subprocess.run(["losetup", "-d", node], check=False)
        for n in range(1, CARDS + 1):
            with contextlib.suppress(OSError):
                (WORK / f"card{n}.img").unlink()


def _sims_down(prefix: str = "demo-sim") -> None:
    for n in range(1, SIMS + 1):
        subprocess.run(
            [*FLEET, "lab", "down", f"{prefix}-{n}", "--rm"], capture_output=True, check=False
        )


def rollout(release: Path) -> None:
    """2.0.0 to a small fleet of simulated boards, in waves, with a journal."""
    _sims_down()
    pub = WORK / "keys" / "release.pub"
    step(f"start {SIMS} simulated boards", "lab", "up", "--sim", "--count", str(SIMS),
         "--name", "demo-sim", "--trust", pub)
    inventory = WORK / "fleet.toml"
    step("write their inventory", "lab", "inventory", "--out", inventory, "--prefix", "demo-sim")
    (WORK / "fleet.rollouts.sqlite").unlink(missing_ok=True)
    proc = step("roll 2.0.0 out in waves of 1, 50%, 100%", "rollout", release, "--inventory",
                inventory, "--trust", pub, "--waves", "1,50%,100%", "--parallel", "4", "--json",
                json_out=True)
    report = json.loads(proc.stdout)
    title, _, seconds = summary.pop()
    counts = ", ".join(f"{k} {v}" for k, v in sorted(report["counts"].items()))
    summary.append((title, report["state"], f"{counts}; {seconds}"))
    _sims_down()


def pull(release: Path) -> None:
    """Boards that pull: 2.0.0 published to a folder behind nginx (on loopback), 50% of
    the group then all of it, watched through the boards' own reports."""
    from fleet.pull import nginx

    _sims_down("demo-pull")
    keys = WORK / "keys"
    if not (keys / "timestamp.sec").exists():
        step("make the online timestamp key", "keys", "generate", "--out", keys,
             "--name", "timestamp")
    store = WORK / "store"
    shutil.rmtree(store, ignore_errors=True)
    store.mkdir()
    with nginx.serving(store, WORK / "nginx") as web:
        step(f"start {SIMS} simulated boards that poll the store", "lab", "up", "--sim",
             "--count", str(SIMS), "--name", "demo-pull", "--trust", keys / "release.pub",
             "--pull-url", web.url(), "--pull-group", "demo", "--pull-interval", "2",
             "--pull-jitter", "1", "--pull-key", keys / "timestamp.pub")
        inventory = WORK / "pull.toml"
        step("write their inventory", "lab", "inventory", "--out", inventory,
             "--prefix", "demo-pull", "--group", "demo")
        proc = step("publish 2.0.0 for them: 50%, then 100%, watched", "publish", release,
                    "--to", store, "--group", "demo", "--percent", "50,100", "--watch",
                    "-I", inventory, "--wave-time", "3m", "--key", keys / "release.sec",
                    "--timestamp-key", keys / "timestamp.sec", "--json", json_out=True)
        result = json.loads(proc.stdout)
        title, _, seconds = summary.pop()
        waves = ", ".join(f"{w['percent']}%: {len(w['updated'])} updated" for w in result["waves"])
        summary.append((title, result["state"], f"{waves}; {seconds}"))
        step("what the boards reported", "status", "--published", store)
    _sims_down("demo-pull")


if __name__ == "__main__":
    main()
