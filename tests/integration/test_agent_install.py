"""The agent's install path run as the board runs it (tests/agent_tree.py): what an
upload may carry into the incoming folder, what counts as installed, and the lock.

Issue 10: mixed slots (a planted done marker), a fuzz of install-manifest's input, a
card that refuses writes, and try/commit/rollback under one lock."""

from __future__ import annotations

import fcntl
import io
import json
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet.trust import generate_key
from fleet.update.machine import manifest_upload
from tests.agent_tree import CHROOT, AgentTree, available, make_release

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not available(), reason="needs root, busybox, signify-openbsd, gcc"),
]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    made = generate_key(tmp_path_factory.mktemp("keys"), "release")
    return made.secret, made.public


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory, keys: tuple[Path, Path]) -> Iterator[AgentTree]:
    board = AgentTree(tmp_path_factory.mktemp("board") / "root", [keys[1]])
    yield board
    board.close()


@pytest.fixture(scope="module")
def r2(tmp_path_factory: pytest.TempPathFactory, keys: tuple[Path, Path]) -> Path:
    return make_release(tmp_path_factory.mktemp("r2") / "release", keys[0], 2)


def status(tree: AgentTree) -> dict[str, object]:
    proc = tree.agent("status")
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout))


def install(tree: AgentTree, release: Path) -> None:
    proc = tree.agent("install-manifest", data=manifest_upload(release))
    assert proc.returncode == 0, proc.stderr
    for name in ("boot", "rootfs"):
        proc = tree.agent("install", name, data=(release / f"{name}.img").read_bytes())
        assert proc.returncode == 0, proc.stderr


def tar_of(
    members: list[tarfile.TarInfo | tuple[str, bytes]],
    fmt: int = tarfile.USTAR_FORMAT,
    pax: dict[str, str] | None = None,
) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt, pax_headers=pax) as tar:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
            else:
                info = tarfile.TarInfo(member[0])
                info.size = len(member[1])
                tar.addfile(info, io.BytesIO(member[1]))
    return buffer.getvalue()


def good_members(release: Path) -> list[tuple[str, bytes]]:
    members = [("manifest.json", (release / "manifest.json").read_bytes())]
    for sig in sorted((release / "signatures").iterdir()):
        members.append((f"signatures/{sig.name}", sig.read_bytes()))
    return members


def link(name: str, target: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def assert_only_expected_writes(before: dict[str, bytes], after: dict[str, bytes]) -> None:
    """The agent's own log and the boot state (slot B cleared) are the only writes an
    upload may cause outside the incoming folder."""
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    assert changed <= {
        "data/fleet/agent.log",
        "boot/firmware/fleet/bootstate.1",
        "boot/firmware/fleet/bootstate.2",
    }, changed


def refused_cleanly(tree: AgentTree, upload: bytes, label: str = "") -> str:
    """Send ``upload``; it must be refused, touch nothing outside the incoming folder,
    leave slot B unbootable and leave nothing that `install` would take."""
    before = tree.files_outside_incoming()
    proc = tree.agent("install-manifest", data=upload)
    err = proc.stderr.decode()
    assert proc.returncode == 3, (label, proc.returncode, err)
    assert err.startswith("refused: "), err
    assert_only_expected_writes(before, tree.files_outside_incoming())
    assert status(tree)["slots"]["B"] is None  # type: ignore[index]
    proc = tree.agent("install", "boot", data=b"x")
    assert proc.returncode == 3 and b"no verified manifest" in proc.stderr
    assert not (tree.root / "run/fleet/incoming").exists()
    return err.strip()


def test_planted_done_marker_cannot_mark_a_slot_installed(tree: AgentTree, r2: Path) -> None:
    """An upload with a signed manifest plus an empty done.rootfs: before the fix, `agent
    install boot` then recorded slot B as installed with the old rootfs bytes."""
    members = [*good_members(r2), ("done.rootfs", b"")]
    why = refused_cleanly(tree, tar_of(members))
    assert (
        why == "refused: malformed release upload: unexpected member 'done.rootfs' "
        "(only manifest.json and signatures/KEYID.sig)"
    )
    # The same without the plant: boot alone is not an installed slot.
    proc = tree.agent("install-manifest", data=tar_of(good_members(r2)))
    assert proc.returncode == 0, proc.stderr
    proc = tree.agent("install", "boot", data=(r2 / "boot.img").read_bytes())
    assert proc.returncode == 0 and b"installed" not in proc.stdout
    assert status(tree)["slots"]["B"] is None  # type: ignore[index]
    # A new manifest clears what the last one had written.
    proc = tree.agent("install-manifest", data=tar_of(good_members(r2)))
    assert proc.returncode == 0, proc.stderr
    proc = tree.agent("install", "rootfs", data=(r2 / "rootfs.img").read_bytes())
    assert proc.returncode == 0 and b"installed" not in proc.stdout
    assert status(tree)["slots"]["B"] is None  # type: ignore[index]


def test_every_malformed_upload_is_refused(tree: AgentTree, r2: Path) -> None:
    good = good_members(r2)
    manifest = good[0][1]
    sig = good[1]
    upload = tar_of(good)
    cases: dict[str, bytes] = {
        "extra member": tar_of([*good, ("notes.txt", b"hi")]),
        "symlink": tar_of(
            [*good, link("signatures/0123456789abcdef.sig", "/etc/fleet/keys", tarfile.SYMTYPE)]
        ),
        "symlinked folder": tar_of([link("signatures", "/etc/fleet", tarfile.SYMTYPE), *good]),
        "hard link": tar_of([good[0], link(sig[0], "/etc/shadow", tarfile.LNKTYPE)]),
        "folder member": tar_of([link("signatures", "", tarfile.DIRTYPE), *good]),
        "dot-dot": tar_of([good[0], ("signatures/../../etc/fleet/revoked", b"x")]),
        "absolute": tar_of([good[0], ("/etc/fleet/threshold", b"0\n")]),
        "duplicate": tar_of([*good, ("manifest.json", manifest)]),
        "oversized manifest": tar_of([("manifest.json", manifest + b" " * (256 * 1024))]),
        "oversized signature": tar_of([good[0], (sig[0], sig[1] * 100)]),
        "truncated in a header": upload[:700],
        "truncated in data": upload[: 512 + len(manifest) // 2],
        "truncated before the end block": upload[: 512 + -(-len(manifest) // 512) * 512],
        "bad checksum": upload[:148] + b"0000000\0" + upload[156:],
        "gnu long name": tar_of(
            [("manifest.json", manifest), ("signatures/" + "a" * 120 + ".sig", b"x")],
            tarfile.GNU_FORMAT,
        ),
        "pax header": tar_of(good, tarfile.PAX_FORMAT, {"path": "/etc/fleet/x"}),
        "no manifest": tar_of(good[1:]),
        "not a tar": b"manifest.json\n" * 100,
        "empty": b"",
        "too large": upload + bytes(600 * 1024),
        "data after the end": upload + b"x",
        "upper-case name": tar_of([("MANIFEST.JSON", manifest)]),
        "space in name": tar_of([good[0], ("signatures/0123456789abcdef .sig", b"x")]),
        "nul inside name": upload[:8] + b"\0" + upload[9:],
    }
    for label, data in cases.items():
        why = refused_cleanly(tree, data, label)
        assert "malformed release upload" in why or "signature" in why, (label, why)
    assert not (tree.root / "etc/fleet/revoked").read_bytes()
    assert (tree.root / "etc/fleet/threshold").read_text() == "1\n"


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_fuzzed_uploads_never_install(tree: AgentTree, r2: Path, data: st.DataObject) -> None:
    """Random corruption of a good upload: refused, or (where the damage missed every byte
    that counts) accepted with the signed manifest intact; never anything else."""
    upload = bytearray(tar_of(good_members(r2)))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(upload) - 1))
        upload[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.one_of(st.none(), st.integers(0, len(upload))))
    blob = bytes(upload if cut is None else upload[:cut])
    before = tree.files_outside_incoming()
    proc = tree.agent("install-manifest", data=blob)
    assert proc.returncode in (0, 3), proc.stderr
    assert_only_expected_writes(before, tree.files_outside_incoming())
    incoming = tree.root / "run/fleet/incoming"
    if proc.returncode == 0:
        assert (incoming / "manifest.json").read_bytes() == (r2 / "manifest.json").read_bytes()
        assert sorted(p.name for p in incoming.iterdir()) == [
            "manifest.json",
            "payloads",
            "signatures",
            "slot",
            "slot-info",
        ]
    else:
        assert not incoming.exists()
    assert status(tree)["slots"]["B"] is None  # type: ignore[index]


def test_a_card_that_refuses_writes_records_nothing(
    tmp_path: Path, keys: tuple[Path, Path], r2: Path
) -> None:
    """A worn SD card turns read-only: the write fails. Before the fix the agent hashed
    the stream (tee | sha256sum), found the right hash and recorded the slot installed."""
    board = AgentTree(tmp_path / "root", [keys[1]])
    try:
        install(board, r2)
        assert status(board)["slots"]["B"] is not None  # type: ignore[index]
        loop = board.loops[6]
        subprocess.run(["blockdev", "--setro", loop], check=True)
        proc = board.agent("install-manifest", data=manifest_upload(r2))
        assert proc.returncode == 0, proc.stderr
        proc = board.agent("install", "boot", data=(r2 / "boot.img").read_bytes())
        assert proc.returncode == 0, proc.stderr
        proc = board.agent("install", "rootfs", data=(r2 / "rootfs.img").read_bytes())
        assert proc.returncode == 3, proc.stdout
        assert proc.stderr.decode().startswith(
            "refused: payload rootfs: writing /dev/vda6 failed ("
        )
        assert proc.stderr.decode().rstrip().endswith("slot B stays unbootable")
        assert status(board)["slots"]["B"] is None  # type: ignore[index]
        proc = board.agent("try")
        assert proc.returncode == 3 and b"holds no verified release" in proc.stderr
    finally:
        subprocess.run(["blockdev", "--setrw", board.loops.get(6, "/dev/null")], check=False)
        board.close()


def test_bytes_that_differ_on_the_partition_are_refused(
    tmp_path: Path, keys: tuple[Path, Path], r2: Path
) -> None:
    """The stream is right but the partition holds something else (here: fewer bytes
    arrive than the manifest names, as when a link drops mid-stream)."""
    board = AgentTree(tmp_path / "root", [keys[1]])
    try:
        proc = board.agent("install-manifest", data=manifest_upload(r2))
        assert proc.returncode == 0, proc.stderr
        data = (r2 / "rootfs.img").read_bytes()
        proc = board.agent("install", "rootfs", data=data[:-10])
        assert proc.returncode == 3
        assert b"after writing, the signed manifest says" in proc.stderr
        assert status(board)["slots"]["B"] is None  # type: ignore[index]
    finally:
        board.close()


def test_state_changing_verbs_share_one_lock_that_frees_itself(tree: AgentTree, r2: Path) -> None:
    lock = tree.root / "run/fleet/agent.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        proc = tree.agent("install-manifest", data=manifest_upload(r2))
        assert proc.returncode == 3
        assert b"another agent command is running" in proc.stderr
        # rollback waits for the lock instead of interleaving with the holder.
        waiting = subprocess.Popen(
            [CHROOT, str(tree.root), "/bin/sh", "/etc/fleet/agent", "rollback", "test"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={"PATH": "/bin"},
        )
        time.sleep(1.0)
        assert waiting.poll() is None
    out, err = waiting.communicate(timeout=30)
    assert waiting.returncode == 0, err
    assert b"nothing to roll back" in out
    # A holder killed mid-command leaves no stale lock behind.
    holder = subprocess.Popen(
        [
            "python3",
            "-c",
            "import fcntl,sys,time; f=open(sys.argv[1],'w'); "
            "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)",
            str(lock),
        ],
        stdout=subprocess.PIPE,
    )
    assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
    assert tree.agent("install-manifest", data=manifest_upload(r2)).returncode == 3
    holder.kill()
    holder.wait()
    proc = tree.agent("install-manifest", data=manifest_upload(r2))
    assert proc.returncode == 0, proc.stderr
