"""fleet-delta, the board's delta applier, built for this machine from the same source,
and the agent's install-delta in the agent tree (tests/agent_tree.py): real zstd
--patch-from deltas, applied against a real loop device as the running slot. The attacks
first: a wrong reference, a flipped byte, a truncated delta, data after the frame, a
skippable frame, a frame without its checksum, a window over the board's memory, a
frame that makes another size; each is refused with one line and nothing is installed."""

from __future__ import annotations

import hashlib
import random
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet.delta.make import delta_for
from fleet.release import load_manifest
from fleet.trust import generate_key
from fleet.update.machine import manifest_upload
from tests.agent_tree import (
    AgentTree,
    available,
    build_applier,
    make_release,
    related_release,
)

pytestmark = pytest.mark.integration

SIZE = 3_000_000


@pytest.fixture(scope="module")
def applier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_applier(tmp_path_factory.mktemp("applier"))


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("pair")
    rng = random.Random(14)
    base = bytearray(rng.randbytes(SIZE))
    target = bytearray(base)
    target[1_234_567:1_234_580] = b"one line here"
    (folder / "base").write_bytes(base)
    (folder / "target").write_bytes(target)
    return folder / "base", folder / "target"


def zstd_delta(base: Path, target: Path, out: Path, *extra: str) -> Path:
    subprocess.run(
        ["zstd", "-q", "-f", "-3", "--long=23", f"--patch-from={base}", *extra, str(target),
         "-o", str(out)],
        check=True,
    )
    return out


def apply(applier: Path, ref: Path, delta: bytes, out_size: int = SIZE, wlog: int = 27,
          ref_size: int = SIZE) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [applier, "apply", ref, str(ref_size), str(out_size), str(wlog)],
        input=delta, capture_output=True, check=False,
    )


def refusal(proc: subprocess.CompletedProcess[bytes]) -> str:
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    lines = proc.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_a_delta_rebuilds_the_target_exactly(
    applier: Path, pair: tuple[Path, Path], tmp_path: Path
) -> None:
    base, target = pair
    delta = zstd_delta(base, target, tmp_path / "d.zst").read_bytes()
    assert len(delta) < SIZE // 100
    proc = apply(applier, base, delta)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == target.read_bytes()


def test_a_reference_longer_than_the_base_is_read_only_up_to_its_size(
    applier: Path, pair: tuple[Path, Path], tmp_path: Path
) -> None:
    # The running slot's partition is larger than the payload it holds.
    base, target = pair
    partition = tmp_path / "partition"
    partition.write_bytes(base.read_bytes() + random.Random(1).randbytes(500_000))
    delta = zstd_delta(base, target, tmp_path / "d.zst").read_bytes()
    proc = apply(applier, partition, delta)
    assert proc.returncode == 0 and proc.stdout == target.read_bytes(), proc.stderr


@pytest.mark.parametrize(
    ("damage", "said"),
    [
        ("wrong-reference", "the delta does not apply to this slot"),
        ("flipped", "the delta does not apply to this slot"),
        ("truncated", "the delta ends inside its frame"),
        ("trailing", "data after the delta's frame"),
        ("second-frame", "data after the delta's frame"),
        ("empty", "the delta is shorter than a frame header"),
        ("garbage", "not a zstd frame"),
    ],
)
def test_a_damaged_delta_is_refused(
    applier: Path, pair: tuple[Path, Path], tmp_path: Path, damage: str, said: str
) -> None:
    base, target = pair
    delta = bytearray(zstd_delta(base, target, tmp_path / "d.zst").read_bytes())
    ref = base
    if damage == "wrong-reference":
        other = bytearray(base.read_bytes())
        other[2_000_000] ^= 0xFF  # a slot that is not quite what the host thinks
        ref = tmp_path / "other"
        ref.write_bytes(other)
    elif damage == "flipped":
        delta[len(delta) // 2] ^= 0x10
    elif damage == "truncated":
        del delta[-5:]
    elif damage == "trailing":
        delta += b"\0"
    elif damage == "second-frame":
        delta += bytes(delta)
    elif damage == "empty":
        delta = bytearray()
    elif damage == "garbage":
        delta = bytearray(random.Random(2).randbytes(4096))
    proc = apply(applier, ref, bytes(delta))
    assert refusal(proc).startswith(f"fleet-delta: {said}"), proc.stderr


def test_frames_without_their_checks_are_refused(
    applier: Path, pair: tuple[Path, Path], tmp_path: Path
) -> None:
    base, target = pair
    unchecked = zstd_delta(base, target, tmp_path / "n.zst", "--no-check").read_bytes()
    assert refusal(apply(applier, base, unchecked)) == (
        "fleet-delta: the frame carries no content checksum"
    )
    skippable = (0x184D2A50).to_bytes(4, "little") + (4).to_bytes(4, "little") + b"abcd"
    assert refusal(apply(applier, base, skippable)) == (
        "fleet-delta: a skippable frame is not a delta"
    )


def test_sizes_and_windows_beyond_what_was_asked_are_refused(
    applier: Path, pair: tuple[Path, Path], tmp_path: Path
) -> None:
    base, target = pair
    delta = zstd_delta(base, target, tmp_path / "d.zst").read_bytes()
    assert refusal(apply(applier, base, delta, out_size=SIZE - 1)) == (
        f"fleet-delta: the frame makes {SIZE} bytes, the payload is {SIZE - 1}"
    )
    line = refusal(apply(applier, base, delta, wlog=20))
    assert line == "fleet-delta: the delta needs a 2930 KiB window; this board allows 1024 KiB"
    # A frame that does not say its size is bounded as it is decoded.
    sizeless = tmp_path / "s.zst"
    zstd_delta(base, target, sizeless, "--no-content-size")
    assert refusal(apply(applier, base, sizeless.read_bytes(), out_size=SIZE - 10)) == (
        "fleet-delta: the delta makes more than the payload's size"
    )
    assert refusal(apply(applier, base, sizeless.read_bytes(), out_size=SIZE + 10)) == (
        "fleet-delta: the delta makes fewer bytes than the payload's size"
    )
    assert refusal(apply(applier, base, delta, ref_size=SIZE + 1)).startswith(
        f"fleet-delta: {base}: shorter than the reference size"
    )


@pytest.mark.parametrize(
    "argv",
    [[], ["apply"], ["apply", "x", "1", "1"], ["apply", "x", "0", "1", "20"],
     ["apply", "x", "1", "1", "9"], ["apply", "x", "1", "1", "32"], ["apply", "x", "-1", "1", "20"],
     ["apply", "x", "1", "1x", "20"], ["patch", "x", "1", "1", "20"]],
)
def test_bad_usage_exits_2(applier: Path, argv: list[str]) -> None:
    proc = subprocess.run([applier, *argv], capture_output=True, check=False)
    assert proc.returncode == 2 and proc.stderr.startswith(b"usage: fleet-delta apply ")


# ---- the agent's install-delta, in the agent tree ----------------------------------------

agent_only = pytest.mark.skipif(not available(), reason="needs root, busybox, signify, gcc")


@pytest.fixture(scope="module")
def tree(
    tmp_path_factory: pytest.TempPathFactory, applier: Path
) -> Iterator[tuple[AgentTree, Path]]:
    if not available():
        pytest.skip("needs root, busybox, signify-openbsd, gcc")
    made = generate_key(tmp_path_factory.mktemp("keys"), "release")
    board = AgentTree(tmp_path_factory.mktemp("board") / "root", [made.public])
    board.add_applier(applier)
    yield board, made.secret
    board.close()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@agent_only
def test_install_delta_rebuilds_the_slot_and_it_is_recorded(
    tree: tuple[AgentTree, Path], tmp_path: Path
) -> None:
    board, key = tree
    base = make_release(tmp_path / "r1", key, 1, size=400_000)
    target = related_release(base, tmp_path / "r2", key, 2)
    board.hold_in_running_slot(base)
    board.set_meminfo(500_000)
    assert board.agent("status").returncode == 0
    proc = board.agent("install-manifest", data=manifest_upload(target))
    assert proc.returncode == 0, proc.stderr
    manifest = load_manifest(target)
    for payload in manifest.payloads:
        old = load_manifest(base).payload(payload.name)
        delta = delta_for(base / old.file, old.sha256, target / payload.file, payload.sha256,
                          tmp_path / "store")
        proc = board.agent("install-delta", payload.name, str(old.size),
                           data=delta.path.read_bytes())
        assert proc.returncode == 0, proc.stderr
        part = {"boot": 3, "rootfs": 6}[payload.name]
        assert sha(board.partition(part)[: payload.size]) == payload.sha256
    assert b"installed release 2 in slot B" in proc.stdout
    log = (board.root / "data/fleet/agent.log").read_text()
    assert "payload rootfs rebuilt from a delta to /dev/vda6" in log


@agent_only
def test_install_delta_refusals_leave_the_slot_unbootable(
    tree: tuple[AgentTree, Path], tmp_path: Path
) -> None:
    board, key = tree
    base = make_release(tmp_path / "r1", key, 1, size=400_000)
    target = make_release(tmp_path / "r3", key, 3, size=400_000)
    board.hold_in_running_slot(base)
    proc = board.agent("install-manifest", data=manifest_upload(target))
    assert proc.returncode == 0, proc.stderr
    old = load_manifest(base).payload("rootfs")
    new = load_manifest(target).payload("rootfs")
    delta = delta_for(base / old.file, old.sha256, target / new.file, new.sha256,
                      tmp_path / "store").path.read_bytes()
    cases = [
        (500_000, delta[:-7], "the delta was refused (the delta ends inside its frame)"),
        (500_000, delta[:40] + bytes([delta[40] ^ 1]) + delta[41:], "the delta was refused ("),
        (None, delta, "cannot tell this board's free memory"),
        (100, delta, "the delta was refused (the delta needs a "),
    ]
    for available_kib, data, said in cases:
        board.set_meminfo(available_kib)
        proc = board.agent("install-delta", "rootfs", str(old.size), data=data)
        err = proc.stderr.decode()
        assert proc.returncode == 3 and said in err, (said, err)
        assert len(err.strip().splitlines()) == 1, err
        status = board.agent("status")
        assert b'"B":null' in status.stdout, status.stdout
    board.set_meminfo(500_000)
    for args, said in (
        (("rootfs", "0"), "base size '0' is not a number"),
        (("rootfs", "12x"), "base size '12x' is not a number"),
        (("rootfs", str(100 << 20)), "/dev/vda5: shorter than the reference size"),
        (("kernel", "10"), "the manifest has no payload 'kernel'"),
    ):
        proc = board.agent("install-delta", *args, data=delta)
        assert proc.returncode == 3 and said in proc.stderr.decode(), (args, proc.stderr)
    board.root.joinpath("usr/sbin/fleet-delta").rename(board.root / "usr/sbin/fleet-delta.off")
    try:
        proc = board.agent("install-delta", "rootfs", str(old.size), data=delta)
        assert b"this image has no delta applier" in proc.stderr
        assert b'"applier":false' in board.agent("status").stdout
    finally:
        board.root.joinpath("usr/sbin/fleet-delta.off").rename(board.root / "usr/sbin/fleet-delta")
    assert b'"delta":{"applier":true,"memory_available_kib":500000}' in board.agent("status").stdout
