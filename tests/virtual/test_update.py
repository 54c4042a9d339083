"""A/B updates with automatic rollback on a real QEMU virt board with Debian's U-Boot
(issue 4's scenarios, and issue 3's on-board refusals). One board goes through the
scenarios in order (v1 -> v2 -> broken ones -> power cuts), as a board in the field would.

Releases are real builds of examples/hello-c with other versions: v2 good, v3 whose app
never answers its health check, v4 = v2's payloads with an initramfs that cannot boot
(re-signed), v5 whose app stops every process (the board hangs), v6 and v7 good.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet import bootstate, lab
from fleet.errors import RemoteError
from fleet.hashing import sha256_file
from fleet.image.disk import read_partitions
from fleet.release import Payload, load_manifest, write_manifest
from fleet.trust import load_trust, sign_release
from fleet.update import machine
from fleet.update.result import Outcome
from fleet.update.status import BoardStatus
from fleet.update.target import resolve
from tests.conftest import Built, copy_example, fleet

pytestmark = pytest.mark.virtual

BOARD = "upd"
MTOOLS = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
CUTS = int(os.environ.get("FLEET_TEST_POWER_CUTS", "20"))


@dataclasses.dataclass(frozen=True)
class Releases:
    v1: Built
    v2: Path
    v3: Path
    v4: Path
    v5: Path
    v6: Path
    v7: Path
    v8: Path
    v9: Path
    v11: Path
    back: Path
    pub: Path


def _build(
    v1_app: Path,
    base: Path,
    key: Path,
    number: int,
    version: str,
    command: str | None = None,
    timeout: int | None = None,
    health: str | None = None,
    release_number: int | None = None,
) -> Path:
    edits: dict[str, str] = {}
    if health is not None:
        edits['http = "/health"'] = health
    if command is not None:
        edits['command = "/app/bin/hello-c"'] = f'command = "{command}"'
    if timeout is not None:
        edits["timeout = 60"] = f"timeout = {timeout}"
    # With release_number, fleet.toml keeps the example's own number: the CLI sets it.
    app = copy_example(
        "hello-c", base / f"app{number}", version=version,
        release=number if release_number is None else None, lock_from=v1_app, edits=edits,
    )
    out = base / f"out{number}"
    extra = ["--release-number", str(release_number)] if release_number else []
    fleet("build", "--board", "qemu-virt-arm64", "--project", app, "--out", out, "--key", key,
          "--dev", *extra)
    return out / "release"


def _broken_boot(good: Path, dest: Path, key: Path, number: int) -> Path:
    """``good``'s payloads, but the boot partition's initramfs is garbage: the kernel
    panics (panic=5 resets), so the trial never reaches userspace. Re-signed."""
    subprocess.run(["cp", "-r", str(good), str(dest)], check=True)
    garbage = dest.parent / "garbage"
    garbage.write_bytes(random.Random(4).randbytes(4096))
    boot = dest / "boot.vfat"
    subprocess.run(
        ["mcopy", "-o", "-i", str(boot), str(garbage), "::/initrd.zst"], check=True, env=MTOOLS
    )
    manifest = load_manifest(dest)
    payloads = tuple(
        Payload(p.name, p.file, boot.stat().st_size, sha256_file(boot)) if p.name == "boot" else p
        for p in manifest.payloads
    )
    manifest = dataclasses.replace(
        manifest, release=number, version=f"{number}.0.0-broken-boot", payloads=payloads
    )
    write_manifest(dest, manifest)
    for sig in (dest / "signatures").glob("*.sig"):
        sig.unlink()
    sign_release(dest, key)
    return dest


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory, hello_virt: Built) -> Releases:
    base = tmp_path_factory.mktemp("update-releases")
    key = hello_virt.key
    v2 = _build(hello_virt.app, base, key, 2, "2.0.0")
    v3 = _build(
        hello_virt.app, base, key, 3, "3.0.0-broken-app", command="/bin/sleep 100000", timeout=10
    )
    v5 = _build(hello_virt.app, base, key, 5, "5.0.0-hang", command="/bin/kill -STOP -1")
    v6 = _build(hello_virt.app, base, key, 6, "6.0.0")
    v7 = _build(hello_virt.app, base, key, 7, "7.0.0")
    # dies at once; a deadline so long that only its exits can end the trial in time
    v8 = _build(hello_virt.app, base, key, 8, "8.0.0-crashing", command="/bin/false", timeout=900)
    # a health check that never returns (the app itself is fine)
    v9 = _build(
        hello_virt.app, base, key, 9, "9.0.0-hung-check", timeout=25,
        health='command = "sleep 100000"',
    )
    # never healthy, with time to stop its health watcher before the deadline (the test
    # stops it within seconds of the board's "system up")
    v11 = _build(
        hello_virt.app, base, key, 11, "11.0.0-stuck", command="/bin/sleep 100000", timeout=25
    )
    # going back to 2.0.0: the same sources, built as a new, higher release
    back = _build(hello_virt.app, base, key, 10, "2.0.0", release_number=10)
    v4 = _broken_boot(v2, base / "release4", key, 4)
    return Releases(hello_virt, v2, v3, v4, v5, v6, v7, v8, v9, v11, back, hello_virt.pub)


RECORD = "/data/app/record"
RECORD_TEXT = "written by 1.0.0 before any update\n"


@pytest.fixture(scope="module")
def board(releases: Releases) -> Iterator[str]:
    fleet("lab", "up", "--board", "qemu-virt-arm64", "--disk", releases.v1.disk, "--name", BOARD)
    # The app's data (FLEET_DATA=/data/app) must outlive every update, rollback and cut.
    with lab.session(lab.get(BOARD)) as session:
        written = session.exec(f"cat > {RECORD} && sync", input=RECORD_TEXT.encode())
    assert written.exit_code == 0
    yield BOARD
    fleet("lab", "down", BOARD, check=False)


def assert_record_kept() -> None:
    with lab.session(lab.get(BOARD)) as session:
        kept = session.exec(f"cat {RECORD}")
    assert kept.stdout.decode() == RECORD_TEXT


# ---- helpers --------------------------------------------------------------------------


def update(release: Path, *extra: str) -> tuple[dict[str, object], str, int]:
    proc = fleet("update", BOARD, release, *extra, "--json", check=False)
    return json.loads(proc.stdout), proc.stderr, proc.returncode


def status() -> BoardStatus:
    return machine.board_status(resolve(BOARD))


def assert_runs(version: str, slot: str) -> BoardStatus:
    now = status()
    assert (now.app_version, now.running_slot) == (version, slot), now.raw
    assert now.committed and not now.trial_pending, now.raw
    return now


def assert_runs_once_up(version: str, slot: str, timeout: float = 60) -> BoardStatus:
    """assert_runs on a board that has just printed its up line: SSH may follow it by a
    moment, so connection failures are retried until ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return assert_runs(version, slot)
        except RemoteError:
            assert time.monotonic() < deadline, "the board did not answer SSH"
            time.sleep(0.5)


def state_copies(name: str = BOARD) -> tuple[bytes | None, bytes | None]:
    """The two boot state copies as they are on the board's disk (read while it is off)."""
    disk = lab.get(name).disk
    start = read_partitions(disk)[1].start
    found: list[bytes | None] = []
    for name in bootstate.COPIES:
        proc = subprocess.run(
            ["mtype", "-i", f"{disk}@@{start}", f"::/{name}"], capture_output=True, env=MTOOLS
        )
        found.append(proc.stdout if proc.returncode == 0 else None)
    return found[0], found[1]


def write_copy(index: int, data: bytes, tmp: Path, name: str = BOARD) -> None:
    disk = lab.get(name).disk
    start = read_partitions(disk)[1].start
    src = tmp / "copy"
    src.write_bytes(data)
    subprocess.run(
        ["mcopy", "-o", "-i", f"{disk}@@{start}", str(src), f"::/{bootstate.COPIES[index]}"],
        check=True,
        env=MTOOLS,
    )


def console_since(offset: int) -> str:
    return lab.get(BOARD).console_log.read_bytes()[offset:].decode(errors="replace")


def console_size() -> int:
    return lab.get(BOARD).console_log.stat().st_size


def wait_console(offset: int, text: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while text not in console_since(offset):
        assert time.monotonic() < deadline, f"{text!r} not on the console:\n{console_since(offset)}"
        time.sleep(0.1)


def agent(cmd: str, data: bytes | None = None) -> tuple[int, str, str]:
    with lab.session(lab.get(BOARD)) as session:
        result = session.exec(f"/etc/fleet/agent {cmd}", input=data, timeout=120)
    return result.exit_code, result.stdout.decode(), result.stderr.decode()


def install_without_try(release: Path) -> None:
    """Everything `fleet update` does before `try`, straight through the agent."""
    code, _, err = agent("install-manifest", machine.manifest_upload(release))
    assert code == 0, err
    for payload in load_manifest(release).payloads:
        code, _, err = agent(f"install {payload.name}", (release / payload.file).read_bytes())
        assert code == 0, err


# ---- scenarios ------------------------------------------------------------------------


def test_good_update_v1_to_v2_survives_power_cycles(board: str, releases: Releases) -> None:
    assert_runs("1.0.0", "A")
    result, err, code = update(releases.v2, "--trust", str(releases.pub))
    assert code == 0, err
    assert result["outcome"] == "updated" and result["running_slot"] == "B"
    assert result["running_version"] == "2.0.0"
    now = assert_runs("2.0.0", "B")
    assert now.floor == 2 and now.health == "healthy"
    lab.power(board, "cycle")
    assert_runs("2.0.0", "B")


def test_power_cycle_without_update_changes_no_attempt_counter(board: str) -> None:
    lab.power(board, "off")
    before = state_copies()
    lab.power(board, "on")
    lab.power(board, "off")
    after = state_copies()
    lab.power(board, "on")
    # Not one byte of the boot state was written by the two boots.
    assert before == after and before[0] is not None
    state, _ = bootstate.current(before)
    assert state.default == "B" and not state.pending()
    assert_runs("2.0.0", "B")


def test_broken_app_rolls_back_and_is_not_retried(board: str, releases: Releases) -> None:
    result, err, code = update(releases.v3, "--trust", str(releases.pub))
    assert code == 10, err
    assert (result["outcome"], result["reason"]) == ("rolled-back", "health failed")
    assert_runs("2.0.0", "B")
    offset = console_size()
    lab.power(board, "cycle")
    assert "3.0.0" not in console_since(offset)  # the bootloader does not try v3 again
    assert_runs("2.0.0", "B")
    assert_record_kept()


def test_app_that_keeps_exiting_fails_its_trial_without_waiting_out_the_deadline(
    board: str, releases: Releases
) -> None:
    offset = console_size()
    # The release's own deadline is 900 s; the host gives up long before that, so an
    # outcome other than its timeout shows the board decided on the app's exits.
    result, err, code = update(releases.v8, "--trust", str(releases.pub), "--health-timeout", "150")
    assert code == 10, err
    assert (result["outcome"], result["reason"]) == ("rolled-back", "health failed")
    console = console_since(offset)
    assert "the app exited 3 times before its first pass" in console
    assert "rolling back slot A" in console
    assert_runs("2.0.0", "B")
    assert_record_kept()


def test_broken_boot_falls_back_in_the_bootloader(board: str, releases: Releases) -> None:
    offset = console_size()
    proc = fleet("update", BOARD, releases.v4, "--trust", releases.pub, check=False)
    assert proc.returncode == 10, proc.stderr
    assert "rolled-back: boot failed" in proc.stdout
    console = console_since(offset)
    assert "trial boot of slot A" in console
    assert "used its boot attempts without committing; back to slot B" in console
    assert_runs("2.0.0", "B")


def test_an_app_that_stops_every_process_cannot_hang_the_board(
    board: str, releases: Releases
) -> None:
    """v5's app runs `kill -STOP -1`. Before issue 10 (item 5) it ran as root and froze
    the whole board until the watchdog reset it; as its own user it can stop only
    itself, so the health check fails and the board rolls back by itself."""
    offset = console_size()
    result, err, code = update(releases.v5, "--trust", str(releases.pub), "--health-timeout", "150")
    assert code == 10, err
    assert (result["outcome"], result["reason"]) == ("rolled-back", "health failed")
    console = console_since(offset)
    assert "system up: slot A, hello-c 5.0.0-hang" in console
    assert "rolling back slot A" in console
    assert_runs("2.0.0", "B")


def test_hung_trial_is_reset_by_the_watchdog(board: str, releases: Releases) -> None:
    """The whole board hangs during a trial (every process stopped, by root this time):
    nothing feeds the watchdog, it resets the board, the bootloader falls back."""
    install_without_try(releases.v5)
    offset = console_size()
    code, _, err = agent("try")
    assert code == 0, err
    wait_console(offset, "system up: slot A, hello-c 5.0.0-hang")
    # The network is up before SSH is: wait for the SSH server itself (its banner), or the
    # session below would be refused and nothing stopped.
    lab.wait_until_up(lab.get(BOARD), offset, timeout=60)
    lost = (RemoteError, OSError, EOFError)
    with contextlib.suppress(*lost), lab.session(lab.get(BOARD)) as session:
        session.exec("kill -STOP -1", timeout=3)  # stops its own SSH server too
    wait_console(offset, "used its boot attempts without committing; back to slot B", 180)
    wait_console(offset, "system up: slot B, hello-c 2.0.0")
    console = console_since(offset)
    # No rollback from the board's own software: the watchdog reset it.
    assert "rolling back slot A" not in console
    assert console.count("U-Boot 20") >= 2
    now = assert_runs_once_up("2.0.0", "B")
    assert now.last_trial.startswith("release=5 slot=A from=B") and "booted" in now.last_trial
    assert "rollback" not in now.last_trial and "committed" not in now.last_trial


def test_board_refuses_tampered_and_downgraded_releases(
    board: str, releases: Releases, tmp_path: Path
) -> None:
    """Issue 3: the host's checks bypassed, the board's own checks stand."""
    tampered = tmp_path / "tampered"
    subprocess.run(["cp", "-r", str(releases.v6), str(tampered)], check=True)
    rootfs = tampered / "rootfs.squashfs"
    data = bytearray(rootfs.read_bytes())
    data[len(data) // 2] ^= 0x01
    rootfs.write_bytes(bytes(data))

    result, _, code = update(tampered, "--insecure-skip-host-checks")
    assert code == 11 and result["outcome"] == "refused"
    reason = str(result["reason"])
    assert reason.startswith("board: payload rootfs: /dev/vda5 holds SHA-256 "), reason
    assert "after writing, the signed manifest says" in reason
    # Straight to the agent: a manifest changed after signing, and a downgrade.
    forged = tmp_path / "forged"
    subprocess.run(["cp", "-r", str(releases.v6), str(forged)], check=True)
    manifest = forged / "manifest.json"
    manifest.write_bytes(manifest.read_bytes().replace(b'"6.0.0"', b'"6.0.1"'))
    code, _, err = agent("install-manifest", machine.manifest_upload(forged))
    assert code == 3 and "does not verify" in err
    code, _, err = agent("install-manifest", machine.manifest_upload(releases.v1.release))
    assert code == 3 and "release 1 is not above the board's floor 2" in err
    proc = fleet("update", BOARD, releases.v1.release, "--insecure-skip-host-checks", check=False)
    assert proc.returncode == 11
    assert "refused: board: release 1 is not above the board's floor 2" in proc.stdout
    log = fleet("lab", "ssh", BOARD, "--", "cat", "/data/fleet/agent.log").stdout
    assert "refused: payload rootfs" in log and "refused: release 1 is not above" in log
    lab.power(board, "cycle")
    now = assert_runs("2.0.0", "B")
    assert now.slot("A") is None  # the refused payload left slot A unbootable


def test_power_cuts_during_the_stream(board: str, releases: Releases) -> None:
    release = releases.v6
    manifest = load_manifest(release)
    total = sum(p.size for p in manifest.payloads)
    rng = random.Random(int(os.environ.get("FLEET_TEST_SEED", "6")))
    policy = load_trust(releases.pub)
    for cut in range(CUTS):
        offset = rng.randrange(0, total)
        sent_before: dict[str, int] = {}
        done = [False]

        def progress(name: str, sent: int, size: int) -> None:
            sent_before[name] = sent
            if not done[0] and sum(sent_before.values()) >= offset:
                done[0] = True
                lab.power(board, "off")

        options = machine.Options(trust=policy, progress=progress, deltas=False)
        result = machine.update(resolve(board), release, options)
        assert result.outcome is Outcome.UNREACHABLE, (cut, offset, result)
        lab.power(board, "on")
        now = assert_runs("2.0.0", "B")
        assert now.slot("A") is None, (cut, offset, now.raw)  # never bootable half-written
    assert_record_kept()


def test_power_cuts_between_steps(board: str, releases: Releases, tmp_path: Path) -> None:
    # After the stream, before `try`: the slot is installed but nothing boots it.
    install_without_try(releases.v6)
    lab.power(board, "cycle")
    assert_runs("2.0.0", "B")
    assert status().slot("A") is not None

    # During the boot state write: a torn copy (half of the bytes of the next state) is
    # ignored; the board boots from the other copy.
    lab.power(board, "off")
    state, source = bootstate.current(state_copies())
    trial = dataclasses.replace(state, seq=state.seq + 1, trial="A", tries=1)
    torn = bootstate.encode(trial)[:40] + bytes(bootstate.SIZE - 40)
    write_copy(bootstate.write_target(source), torn, tmp_path)
    lab.power(board, "on")
    assert_runs("2.0.0", "B")

    # During the trial boot: a cut in the trial's kernel start uses its only attempt.
    code, _, err = agent("try")
    assert code == 0, err
    offset = console_size()
    wait_console(offset, "trial boot of slot A")
    lab.power(board, "off")
    lab.power(board, "on")
    assert_runs("2.0.0", "B")

    # A following update goes through.
    result, err, code = update(releases.v6, "--trust", str(releases.pub))
    assert code == 0 and result["outcome"] == "updated", (result, err)
    assert_runs("6.0.0", "A")


def test_power_cut_during_commit(board: str, releases: Releases) -> None:
    install_without_try(releases.v7)
    offset = console_size()
    code, _, err = agent("try")
    assert code == 0, err
    wait_console(offset, "fleet: app healthy: hello-c 7.0.0")
    lab.power(board, "off")  # the health watcher is writing the commit now
    lab.power(board, "on")
    now = status()
    assert now.committed
    assert (now.app_version, now.running_slot) in {("6.0.0", "A"), ("7.0.0", "B")}
    if now.app_version == "6.0.0":
        result, err, code = update(releases.v7, "--trust", str(releases.pub))
        assert code == 0, (result, err)
    assert_runs("7.0.0", "B")
    assert_record_kept()


def test_hung_health_check_is_ended_by_the_board(board: str, releases: Releases) -> None:
    """Issue 10, item 4: each check has its own timeout, so a check that never returns
    fails the trial within its deadline; before, the trial stayed undecided (the watchdog
    kept being fed) until the host gave up."""
    offset = console_size()
    result, err, code = update(releases.v9, "--trust", str(releases.pub), "--health-timeout", "110")
    assert code == 10, err
    assert (result["outcome"], result["reason"]) == ("rolled-back", "health failed")
    console = console_since(offset)
    assert "app unhealthy: health check failed: the health check did not finish within 10 s" in (
        console
    )
    assert "rolling back slot A" in console
    assert_runs("7.0.0", "B")


def test_a_trial_whose_watcher_is_stuck_is_reset_at_its_deadline(
    board: str, releases: Releases
) -> None:
    """Issue 10, item 4: the watchdog is fed only until the trial's deadline. Here the
    health watcher itself is stopped (the board otherwise runs fine): before, busybox's
    watchdog daemon fed the watchdog for ever and only the host's rollback ended it."""
    install_without_try(releases.v11)
    offset = console_size()
    code, _, err = agent("try")
    assert code == 0, err
    wait_console(offset, "system up: slot A, hello-c 11.0.0-stuck")
    lab.wait_until_up(lab.get(BOARD), offset, timeout=60)
    with lab.session(lab.get(BOARD)) as session:
        stopped = session.exec(
            "for d in /proc/[0-9]*; do "
            "[ \"$(tr '\\0' ' ' < $d/cmdline 2>/dev/null)\" = '/bin/sh /etc/fleet/health-watch ' ]"
            " && kill -STOP ${d#/proc/} && echo ${d#/proc/}; done; true"
        )
    assert stopped.exit_code == 0 and stopped.stdout.strip(), stopped
    wait_console(offset, "trial undecided at its deadline: the watchdog resets the board", 200)
    wait_console(offset, "used its boot attempts without committing; back to slot B", 120)
    wait_console(offset, "system up: slot B, hello-c 7.0.0")
    assert_runs_once_up("7.0.0", "B")
    assert "rolling back slot A" not in console_since(offset)


def test_going_back_is_a_new_release_and_the_old_one_stays_refused(
    board: str, releases: Releases
) -> None:
    """Issue 10, item 3: the floor only rises; 2.0.0 comes back as release 10."""
    result, err, code = update(releases.back, "--trust", str(releases.pub))
    assert code == 0 and result["outcome"] == "updated", (result, err)
    now = assert_runs("2.0.0", "A")
    assert now.floor == 10 and now.app_release == 10
    proc = fleet("update", BOARD, releases.v2, "--trust", releases.pub, check=False)
    assert proc.returncode == 11
    assert "release 2 is not above the board's floor 10" in proc.stdout + proc.stderr
    proc = fleet("update", BOARD, releases.v7, "--insecure-skip-host-checks", check=False)
    assert proc.returncode == 11
    assert "refused: board: release 7 is not above the board's floor 10" in proc.stdout
    assert_runs("2.0.0", "A")
    assert_record_kept()

