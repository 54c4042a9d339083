"""Delta updates (docs/delta.md) on a real QEMU virt board flashed with hello_virt's disk:
each payload goes as a zstd --patch-from delta against the board's running slot, which
fleet-delta rebuilds on the board into the inactive slot, read back against the signed
manifest. In order on one board, as one in the field: a one-line app change; a power cut
while a delta is applied; damaged deltas; a board whose record names another release than
its slot holds; --full."""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet import bootstate, lab
from fleet.delta import store
from fleet.delta.make import delta_for
from fleet.release import load_manifest, manifest_sha256
from fleet.trust import load_trust
from fleet.update import machine
from fleet.update.result import Outcome
from fleet.update.status import BoardStatus
from fleet.update.target import resolve
from tests.conftest import Built, fleet
from tests.virtual.test_update import state_copies, write_copy

pytestmark = pytest.mark.virtual

BOARD = "dlt"
SOURCE_LINE = 'fprintf(stderr, "hello-c: PORT must be a number from 0 to 65535\\n");'


@dataclasses.dataclass(frozen=True)
class Releases:
    v1: Built
    v2: Path  # a one-line change to the app's source
    v3: Path
    v4: Path
    v5: Path


def _build(v1: Built, base: Path, number: int, line: str) -> Path:
    app = base / f"app{number}"
    shutil.copytree(v1.app, app, ignore=shutil.ignore_patterns("out", ".fleet"))
    toml = app / "fleet.toml"
    text = toml.read_text().replace('version = "1.0.0"', f'version = "{number}.0.0"')
    toml.write_text(text.replace("release = 1\n", f"release = {number}\n"))
    source = app / "src/hello.c"
    code = source.read_text()
    assert SOURCE_LINE in code
    source.write_text(code.replace(SOURCE_LINE, line))
    out = base / f"out{number}"
    fleet("build", "--board", "qemu-virt-arm64", "--project", app, "--out", out,
          "--key", v1.key, "--dev")
    return out / "release"


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory, hello_virt: Built) -> Releases:
    base = tmp_path_factory.mktemp("delta-releases")
    said = [SOURCE_LINE.replace("must be", f"must be (v{n})") for n in (2, 3, 4, 5)]
    built = [_build(hello_virt, base, n, line) for n, line in zip((2, 3, 4, 5), said)]
    return Releases(hello_virt, *built)


@pytest.fixture(scope="module")
def board(releases: Releases) -> Iterator[str]:
    fleet("lab", "up", "--board", "qemu-virt-arm64", "--disk", releases.v1.disk, "--name", BOARD)
    yield BOARD
    fleet("lab", "down", BOARD, check=False)


def update(releases: Releases, release: Path, *extra: str) -> tuple[dict[str, object], str]:
    proc = fleet("update", BOARD, release, "--trust", releases.v1.pub, *extra, "--json",
                 check=False)
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    result = json.loads(proc.stdout)
    assert result["outcome"] == "updated", result
    return result, proc.stderr


def status() -> BoardStatus:
    return machine.board_status(resolve(BOARD))


def slot_sha256(slot: str, name: str, size: int) -> str:
    """The SHA-256 of the first SIZE bytes of the slot's partition, read on the board."""
    part = {("A", "boot"): 2, ("A", "rootfs"): 5, ("B", "boot"): 3, ("B", "rootfs"): 6}
    cmd = f"head -c {size} /dev/vda{part[slot, name]} | sha256sum"
    with lab.session(lab.get(BOARD)) as session:
        answer = session.exec(cmd, timeout=120)
    assert answer.exit_code == 0, answer.stderr
    return answer.stdout.decode().split()[0]


def assert_holds(release: Path, slot: str) -> BoardStatus:
    """The board runs RELEASE, committed, from SLOT, and the slot holds its signed bytes."""
    manifest = load_manifest(release)
    now = status()
    assert (now.app_version, now.running_slot, now.committed) == (manifest.version, slot, True)
    info = now.slot(slot)
    assert info is not None and info.manifest_sha256 == manifest_sha256(release), now.raw
    for payload in manifest.payloads:
        assert slot_sha256(slot, payload.name, payload.size) == payload.sha256, payload.name
    return now


def full_size(release: Path) -> int:
    return sum(p.size for p in load_manifest(release).payloads)


def test_a_one_line_change_ships_as_a_small_delta(board: str, releases: Releases) -> None:
    first = status()
    info = first.slot("A")
    # The flashed disk's boot state names its release, so even the first update is a delta.
    assert info is not None and info.manifest_sha256 == manifest_sha256(releases.v1.release)
    assert first.delta_applier and (first.memory_available_kib or 0) > 0, first.raw
    result, err = update(releases, releases.v2)
    assert result["method"] == "delta", result
    transfers = result["transfers"]
    assert [(t["payload"], t["method"], t["ok"]) for t in transfers] == [  # type: ignore[union-attr]
        ("boot", "delta", True), ("rootfs", "delta", True)
    ], transfers
    sent = int(str(result["bytes_sent"]))
    assert sent < 0.03 * full_size(releases.v2), (sent, full_size(releases.v2))
    assert "as a delta" in err
    assert_holds(releases.v2, "B")
    log = fleet("lab", "ssh", BOARD, "--", "cat", "/data/fleet/agent.log").stdout
    assert "payload rootfs rebuilt from a delta to /dev/vda6" in log, log


def test_a_power_cut_during_a_delta_apply_leaves_the_committed_slot(
    board: str, releases: Releases
) -> None:
    cut = [False]

    def progress(name: str, sent: int, size: int) -> None:
        # The rootfs delta is on its way: the board is rebuilding into slot A right now.
        if name == "rootfs" and not cut[0]:
            cut[0] = True
            lab.power(board, "off")

    options = machine.Options(trust=load_trust(releases.v1.pub), progress=progress)
    result = machine.update(resolve(board), releases.v3, options)
    assert cut[0] and result.outcome is Outcome.UNREACHABLE, result
    assert [t.method for t in result.transfers] == ["delta"], result.transfers
    lab.power(board, "on")
    now = assert_holds(releases.v2, "B")
    assert now.slot("A") is None, now.raw  # never bootable half-rebuilt


def test_damaged_deltas_are_refused_and_sent_in_full(board: str, releases: Releases) -> None:
    # The host's cached deltas for v2 -> v3, damaged where they lie: boot's flipped in
    # its middle, rootfs's cut short. The host sends them as they are; the board refuses.
    base = load_manifest(releases.v2)
    target = load_manifest(releases.v3)
    kept = store.find(manifest_sha256(releases.v2))
    assert kept is not None
    for name, damage in (("boot", "flip"), ("rootfs", "truncate")):
        old, new = base.payload(name), target.payload(name)
        source = kept.payload(name)
        assert source is not None
        delta = delta_for(source, old.sha256, releases.v3 / new.file, new.sha256)
        data = bytearray(delta.path.read_bytes())
        if damage == "flip":
            data[len(data) // 2] ^= 0x40
        else:
            del data[len(data) * 2 // 3 :]
        delta.path.write_bytes(bytes(data))
    result, err = update(releases, releases.v3)
    transfers = result["transfers"]
    assert [(t["payload"], t["method"], t["ok"]) for t in transfers] == [  # type: ignore[union-attr]
        ("boot", "delta", False), ("boot", "full", True),
        ("rootfs", "delta", False), ("rootfs", "full", True),
    ], transfers
    assert result["method"] == "full"
    whys = [t["why_full"] for t in transfers if t["method"] == "full"]  # type: ignore[union-attr]
    assert all(str(w).startswith("the delta failed: payload ") for w in whys), whys
    assert "ends inside its frame" in str(whys[1]), whys
    assert "refused the delta" in err
    assert_holds(releases.v3, "A")


def test_a_board_whose_slot_is_not_what_it_reports_ends_correct(
    board: str, releases: Releases, tmp_path: Path
) -> None:
    # Slot A holds v3; its record is made to name v2 (a record restored from elsewhere,
    # a slot rewritten by hand): the delta made against v2 cannot rebuild v4 from it.
    lab.power(board, "off")
    state, source = bootstate.current(state_copies(board))
    v2 = load_manifest(releases.v2)
    lie = f"{v2.release}:{v2.version}:{manifest_sha256(releases.v2)}"
    write_copy(
        bootstate.write_target(source),
        bootstate.encode(dataclasses.replace(state, seq=state.seq + 1, slot_a=lie)),
        tmp_path,
        board,
    )
    lab.power(board, "on")
    reported = status().slot("A")
    assert reported is not None and reported.version == v2.version
    result, _ = update(releases, releases.v4)
    transfers = result["transfers"]
    assert [(t["method"], t["ok"]) for t in transfers if t["payload"] == "rootfs"] == [  # type: ignore[union-attr]
        ("delta", False), ("full", True)
    ], transfers
    assert_holds(releases.v4, "B")


def test_full_sends_every_payload_whole(board: str, releases: Releases) -> None:
    result, _ = update(releases, releases.v5, "--full")
    assert result["method"] == "full"
    assert result["bytes_sent"] >= full_size(releases.v5)
    assert {t["why_full"] for t in result["transfers"]} == {"--full"}  # type: ignore[union-attr]
    assert_holds(releases.v5, "A")
