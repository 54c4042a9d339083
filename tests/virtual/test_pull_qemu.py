"""Pull mode end to end: two QEMU boards poll a folder store behind a real nginx on this
machine's loopback (through QEMU's user network, where the host is 10.0.2.2). At 50% only
the board whose phasing hash falls inside takes release 2, at 100% the other follows; a
broken release 3 at 50% is tried by one board, fails its health check, is rolled back by
the board on its own and reported, and ``fleet publish --watch`` halts the wave there."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fleet.pull import nginx
from fleet.pull.phasing import in_wave
from fleet.release import load_manifest
from tests.conftest import NEEDS_QEMU, Built, copy_example, fleet, timestamp_key, with_pull
from tests.pull_board import ca_and_server_cert

pytestmark = [pytest.mark.virtual, NEEDS_QEMU]

GROUP = "lobby"


def _names() -> tuple[str, str]:
    """Two board names: at 50% exactly one is inside for release 2 and for release 3."""
    candidates = [f"pull-{i}" for i in range(1, 40)]
    for a in candidates:
        for b in candidates:
            if a < b and all(in_wave(a, r, 50) != in_wave(b, r, 50) for r in (2, 3)):
                return a, b
    raise AssertionError("no pair of names splits both releases")


BOARDS = _names()


def inside(release: int) -> str:
    return next(b for b in BOARDS if in_wave(b, release, 50))


def outside(release: int) -> str:
    return next(b for b in BOARDS if not in_wave(b, release, 50))


@dataclass(frozen=True)
class Lab:
    store: Path
    inventory: Path
    keys: list[str]


@pytest.fixture(scope="module")
def broken_v3(tmp_path_factory: pytest.TempPathFactory, hello_virt: Built) -> Path:
    """Release 3: its app exits at once, so a trial fails its health check quickly. It
    is also built for an https store (openssl and a CA bundle with a private CA)."""
    base = tmp_path_factory.mktemp("pull-v3")
    app = with_pull(copy_example(
        "hello-c", base / "app", version="3.0.0-broken", release=3, lock_from=hello_virt.app,
        edits={'command = "/app/bin/hello-c"': 'command = "/bin/false"'},
    ), hello_virt.pub, 'https = true\nca_file = "store-ca.pem"\n')
    ca, _, _ = ca_and_server_cert(base / "tls", "store.example.com")
    shutil.copyfile(ca, app / "store-ca.pem")
    fleet("build", "--board", "qemu-virt-arm64", "--project", app, "--out", base / "out",
          "--key", hello_virt.key, "--dev")
    return base / "out" / "release"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, hello_virt: Built) -> Iterator[Lab]:
    base = tmp_path_factory.mktemp("pull-qemu")
    store = base / "store"
    store.mkdir()
    with nginx.serving(store, base / "nginx") as web:
        url = f"http://10.0.2.2:{web.port}"
        try:
            for name in BOARDS:
                fleet("lab", "up", "--board", "qemu-virt-arm64", "--disk", hello_virt.disk,
                      "--name", name, "--pull-url", url, "--pull-group", GROUP,
                      "--pull-interval", "2", "--pull-jitter", "1")
            inventory = base / "fleet.toml"
            fleet("lab", "inventory", "--out", inventory, "--prefix", "pull", "--group", GROUP)
            ts_sec = timestamp_key(hello_virt.pub)[0]
            yield Lab(store, inventory,
                      ["--key", str(hello_virt.key), "--timestamp-key", str(ts_sec)])
        finally:
            for name in BOARDS:
                fleet("lab", "down", name, check=False)


def test_an_image_for_an_https_store_carries_openssl_and_the_ca_bundle(broken_v3: Path) -> None:
    listing = subprocess.run(["unsquashfs", "-l", "-d", "", broken_v3 / "rootfs.squashfs"],
                             capture_output=True, text=True, check=True).stdout.split()
    for needed in ("/usr/bin/openssl", "/usr/lib/ssl/cert.pem", "/usr/lib/ssl/openssl.cnf"):
        assert needed in listing, needed
    assert any(p.startswith("/lib/aarch64-linux-gnu/libssl.so.3") or
               p.startswith("/usr/lib/aarch64-linux-gnu/libssl.so.3") for p in listing), \
        [p for p in listing if "ssl" in p]
    bundle = subprocess.run(["unsquashfs", "-cat", broken_v3 / "rootfs.squashfs",
                             "/usr/lib/ssl/cert.pem"], capture_output=True, check=True).stdout
    ca = (broken_v3.parent.parent / "tls" / "ca.pem").read_bytes()
    assert bundle.count(b"BEGIN CERTIFICATE") > 100 and bundle.endswith(ca)


def report(lab: Lab, board: str) -> dict[str, object] | None:
    path = lab.store / "reports" / f"{board}.json"
    return json.loads(path.read_text()) if path.exists() else None


def wait_report(lab: Lab, board: str, target: int, timeout: float = 400) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = report(lab, board)
        if got is not None and got.get("target_release") == target:
            return got
        time.sleep(1)
    raise AssertionError(f"{board} reported nothing on release {target}: {report(lab, board)}")


def on_board(board: str, *cmd: str) -> str:
    return fleet("lab", "ssh", board, "--", *cmd).stdout.strip()


def seen_targets(board: str) -> int:
    return int(on_board(board, "cat", "/data/fleet/pull/targets-version") or 0)


def wait_seen(board: str, version: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while seen_targets(board) < version:
        assert time.monotonic() < deadline, f"{board} never fetched targets {version}"
        time.sleep(1)


def runs(board: str) -> dict[str, object]:
    return json.loads(fleet("status", board, "--json").stdout)


def publish(lab: Lab, release: Path, *args: str, check: bool = True) -> tuple[dict, int]:  # type: ignore[type-arg]
    proc = fleet("publish", release, "--to", lab.store, "--group", GROUP, *lab.keys,
                 "-I", lab.inventory, "--json", *args, check=check, timeout=900)
    return json.loads(proc.stdout), proc.returncode


def test_waves_by_phasing_then_a_broken_release_halts_the_watch(
    lab: Lab, hello_virt: Built, hello_v2_virt: Path, broken_v3: Path
) -> None:
    # The boards were flashed with release 1, which this store never offered: named
    # with --delta-from, it is a base the boards fetch deltas from.
    first, _ = publish(lab, hello_v2_virt, "--percent", "50",
                       "--delta-from", str(hello_virt.release))
    assert first["deltas"] == 2, first
    full = sum(p.size for p in load_manifest(hello_v2_virt).payloads)
    got = wait_report(lab, inside(2), 2)
    assert got["result"] == "updated" and got["release"] == 2 and got["slot"] == "B", got
    assert got["method"] == "delta" and 0 < int(str(got["fetched"])) < 0.03 * full, (got, full)
    # The other board has read that very targets document, and stays where it was.
    wait_seen(outside(2), first["targets_version"])
    other = runs(outside(2))
    assert other["app"]["release"] == 1 and other["slots"]["B"] is None, other
    assert report(lab, outside(2)) is None

    again, _ = publish(lab, hello_v2_virt, "--percent", "100")
    assert again["deltas"] == 2, again  # the next wave keeps the deltas
    got = wait_report(lab, outside(2), 2)
    assert got["result"] == "updated" and got["release"] == 2 and got["method"] == "delta", got
    assert all(runs(b)["app"]["release"] == 2 for b in BOARDS)

    # Release 3 is broken: the board inside the first wave tries it, rolls back by itself
    # and says so; the watch halts at 50% and the other board never takes it.
    result, code = publish(lab, broken_v3, "--percent", "50,100", "--watch",
                           "--max-failures", "0", "--wave-time", "10m", check=False)
    assert code == 14 and result["state"] == "halted" and result["percent"] == 50, result
    assert result["waves"][0]["failed"] == [inside(3)], result
    got = report(lab, inside(3))
    assert got is not None and got["result"] == "rolled-back" and got["release"] == 2, got
    assert got["method"] == "delta", got  # from release 2, the group's previous one
    assert runs(inside(3))["app"]["release"] == 2
    wait_seen(outside(3), result["targets_version"])
    assert runs(outside(3))["app"]["release"] == 2

    status = json.loads(fleet("status", "--published", lab.store, "--json").stdout)
    assert status["groups"][GROUP] == {"rolled-back": 1, "updated": 1}, status
