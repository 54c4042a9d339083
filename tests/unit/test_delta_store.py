"""fleet.delta: the host's release store keeps what it is given and hands back only what
matches its names; deltas are made once per pair, decode to the target and are cached;
choose says why it sends a payload in full.

The store tests are pure; the delta tests run the real zstd, so they are integration
tests by the project's markers."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
import zstandard

from fleet.delta.choose import WORTH, choose
from fleet.delta.make import Delta, DeltaUnavailable, delta_for, window_log_for
from fleet.delta.store import StoreError, find, keep, store_root
from fleet.release import Health, Manifest, Payload, manifest_sha256, write_manifest

UNIT = pytest.mark.unit
ZSTD = pytest.mark.integration

SIZE = 2 << 20


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def changed(data: bytes, count: int = 10) -> bytes:
    out = bytearray(data)
    for i in range(count):
        out[(i * len(data)) // count + 7] ^= 0xFF
    return bytes(out)


def release(folder: Path, rootfs: bytes, boot: bytes = b"boot" * 1000, number: int = 1) -> Path:
    folder.mkdir(parents=True)
    (folder / "boot.vfat").write_bytes(boot)
    (folder / "rootfs.squashfs").write_bytes(rootfs)
    manifest = Manifest(
        app="hello",
        version=f"{number}.0.0",
        release=number,
        board="qemu-virt-arm64",
        arch="arm64",
        payloads=(
            Payload("boot", "boot.vfat", len(boot), sha(boot)),
            Payload("rootfs", "rootfs.squashfs", len(rootfs), sha(rootfs)),
        ),
        health=Health(http=None, command=None, port=8080, timeout=60),
    )
    write_manifest(folder, manifest)
    return folder


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


class Calls:
    """Counts the zstd runs (encode and decode) by wrapping subprocess.Popen, which
    subprocess.run uses too."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail: bool = False) -> None:
        self.encode = 0
        self.decode = 0
        lock = threading.Lock()
        calls = self

        class Counting(subprocess.Popen):  # type: ignore[type-arg]
            def __init__(self, args: Any, *rest: Any, **kwargs: Any) -> None:
                if fail:
                    raise AssertionError(f"zstd ran: {args}")
                with lock:
                    if "-d" in args:
                        calls.decode += 1
                    else:
                        calls.encode += 1
                super().__init__(args, *rest, **kwargs)

        monkeypatch.setattr(subprocess, "Popen", Counting)


@UNIT
def test_keep_then_find_round_trip(tmp_path: Path) -> None:
    rootfs = os.urandom(SIZE)
    folder = release(tmp_path / "rel", rootfs)
    root = tmp_path / "store"
    assert keep(folder, root) == root
    assert keep(folder, root) == root  # again: already there, nothing changes
    name = manifest_sha256(folder)
    stored = root / "manifests" / f"{name}.json"
    assert stored.read_bytes() == (folder / "manifest.json").read_bytes()

    kept = find(name, root)
    assert kept is not None
    assert kept.sha == name and kept.root == root
    assert kept.manifest.payload("rootfs").sha256 == sha(rootfs)
    path = kept.payload("rootfs")
    assert path == root / "payloads" / sha(rootfs)
    assert path.read_bytes() == rootfs
    # Same filesystem: a hard link, not a second copy.
    assert path.stat().st_ino == (folder / "rootfs.squashfs").stat().st_ino
    assert kept.payload("nonesuch") is None
    assert not [p for p in (root / "payloads").iterdir() if p.name.startswith(".")]


@UNIT
def test_payload_of_wrong_size_is_not_offered(tmp_path: Path) -> None:
    folder = release(tmp_path / "rel", os.urandom(4096))
    root = keep(folder, tmp_path / "store")
    kept = find(manifest_sha256(folder), root)
    assert kept is not None
    path = kept.payload("rootfs")
    assert path is not None
    path.unlink()
    path.write_bytes(b"short")
    assert kept.payload("rootfs") is None


@UNIT
@pytest.mark.parametrize(
    "text",
    ["../x", "", "a" * 63, "a" * 65, "A" * 64, "g" * 64, "a" * 64 + "\n", "../" + "a" * 61],
)
def test_find_refuses_malformed_names(tmp_path: Path, text: str) -> None:
    assert find(text, tmp_path / "store") is None


@UNIT
def test_find_refuses_uppercase_of_a_stored_name(tmp_path: Path) -> None:
    folder = release(tmp_path / "rel", os.urandom(4096))
    root = keep(folder, tmp_path / "store")
    name = manifest_sha256(folder)
    assert find(name, root) is not None
    assert find(name.upper(), root) is None
    assert find(name[:-1], root) is None


@UNIT
def test_find_refuses_manifest_not_matching_its_name(tmp_path: Path) -> None:
    one = release(tmp_path / "one", os.urandom(4096))
    two = release(tmp_path / "two", os.urandom(4096), number=2)
    root = keep(one, tmp_path / "store")
    name = manifest_sha256(one)
    # Another valid manifest under this one's name: a damaged or hand-edited store.
    (root / "manifests" / f"{name}.json").write_bytes((two / "manifest.json").read_bytes())
    assert find(name, root) is None


@UNIT
def test_find_of_unknown_release_is_none(tmp_path: Path) -> None:
    assert find("ab" * 32, tmp_path / "store") is None


@UNIT
def test_keep_refuses_payload_not_matching_and_stores_nothing(tmp_path: Path) -> None:
    rootfs = os.urandom(SIZE)
    folder = release(tmp_path / "rel", rootfs)
    (folder / "rootfs.squashfs").write_bytes(changed(rootfs, 1))  # same size, other bytes
    root = tmp_path / "store"
    with pytest.raises(StoreError, match="payload rootfs does not match") as caught:
        keep(folder, root)
    assert "\n" not in str(caught.value)
    assert not (root / "manifests").exists()
    assert list((root / "payloads").iterdir()) == []
    assert find(manifest_sha256(folder), root) is None


@UNIT
def test_keep_refuses_missing_payload(tmp_path: Path) -> None:
    folder = release(tmp_path / "rel", os.urandom(4096))
    (folder / "boot.vfat").unlink()
    with pytest.raises(StoreError, match="payload boot is missing"):
        keep(folder, tmp_path / "store")
    assert not (tmp_path / "store" / "manifests").exists()


@UNIT
def test_store_root_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FLEET_STORE", str(tmp_path / "s"))
    assert store_root() == tmp_path / "s"
    monkeypatch.delenv("FLEET_STORE")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "d"))
    assert store_root() == tmp_path / "d" / "fleet" / "store"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "h"))
    assert store_root() == tmp_path / "h" / ".local" / "share" / "fleet" / "store"


@UNIT
def test_window_log_for() -> None:
    assert window_log_for(1) == 10
    assert window_log_for(SIZE) == 22
    assert window_log_for(SIZE + 1) == 23
    assert window_log_for(1 << 30) == 31
    with pytest.raises(DeltaUnavailable, match="over 1 GiB"):
        window_log_for((1 << 30) + 1)


@ZSTD
def test_delta_is_small_and_decodes_to_target(tmp_path: Path) -> None:
    base_data = os.urandom(SIZE)
    target_data = changed(base_data)
    base = write(tmp_path / "base", base_data)
    target = write(tmp_path / "target", target_data)
    root = tmp_path / "store"
    delta = delta_for(base, sha(base_data), target, sha(target_data), root)
    assert delta.path == root / "deltas" / f"{sha(base_data)}-{sha(target_data)}.zst"
    assert delta.size == delta.path.stat().st_size
    assert delta.size < 0.05 * SIZE
    assert delta.window_log == 21  # the frame's window: the 2 MiB target
    # What the board's fleet-delta requires of a frame besides its window.
    with delta.path.open("rb") as handle:
        frame = zstandard.get_frame_parameters(handle.read(18))
    assert frame.has_checksum
    assert frame.content_size == SIZE
    assert (delta.base_sha, delta.target_sha) == (sha(base_data), sha(target_data))
    out = tmp_path / "out"
    subprocess.run(
        ["zstd", "-d", "-q", f"--patch-from={base}", "--long=31", str(delta.path), "-o", out],
        check=True,
    )
    assert out.read_bytes() == target_data
    assert not [p for p in delta.path.parent.iterdir() if p.suffix == ".tmp"]


@ZSTD
def test_cached_delta_is_returned_without_zstd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base_data = os.urandom(SIZE)
    target_data = changed(base_data)
    base = write(tmp_path / "base", base_data)
    target = write(tmp_path / "target", target_data)
    root = tmp_path / "store"
    first = delta_for(base, sha(base_data), target, sha(target_data), root)
    mtime = first.path.stat().st_mtime_ns
    Calls(monkeypatch, fail=True)
    again = delta_for(base, sha(base_data), target, sha(target_data), root)
    assert again == first
    assert again.path.stat().st_mtime_ns == mtime


@ZSTD
def test_threads_asking_for_one_pair_make_it_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base_data = os.urandom(SIZE)
    target_data = changed(base_data)
    base = write(tmp_path / "base", base_data)
    target = write(tmp_path / "target", target_data)
    root = tmp_path / "store"
    calls = Calls(monkeypatch)
    start = threading.Barrier(8)
    results: list[Delta | BaseException] = []

    def ask() -> None:
        start.wait()
        try:
            results.append(delta_for(base, sha(base_data), target, sha(target_data), root))
        except BaseException as exc:
            results.append(exc)

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 8
    assert all(isinstance(r, Delta) for r in results), results
    assert len({r.path for r in results if isinstance(r, Delta)}) == 1
    assert (calls.encode, calls.decode) == (1, 1)


@ZSTD
def test_base_not_matching_its_hash_is_refused(tmp_path: Path) -> None:
    base_data = os.urandom(SIZE)
    target_data = changed(base_data)
    base = write(tmp_path / "base", changed(base_data, 1))
    target = write(tmp_path / "target", target_data)
    root = tmp_path / "store"
    with pytest.raises(DeltaUnavailable, match="base payload does not match its hash"):
        delta_for(base, sha(base_data), target, sha(target_data), root)
    assert not list((root / "deltas").glob("*.zst"))


@ZSTD
def test_target_not_matching_its_hash_is_refused(tmp_path: Path) -> None:
    base_data = os.urandom(SIZE)
    base = write(tmp_path / "base", base_data)
    target = write(tmp_path / "target", changed(base_data))
    with pytest.raises(DeltaUnavailable, match="target payload does not match its hash"):
        delta_for(base, sha(base_data), target, "cd" * 32, tmp_path / "store")


@UNIT
def test_delta_for_refuses_malformed_hashes(tmp_path: Path) -> None:
    with pytest.raises(DeltaUnavailable, match="64 lowercase hex"):
        delta_for(tmp_path / "a", "../" + "a" * 61, tmp_path / "b", "b" * 64, tmp_path)


@ZSTD
def test_zstd_failure_names_its_last_words(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # zstd itself clamps out-of-range settings, so a stand-in fails in its place.
    fake = write(
        tmp_path / "zstd", b"#!/bin/sh\necho warming up >&2\necho 'No space left' >&2\nexit 1\n"
    )
    fake.chmod(0o755)
    monkeypatch.setattr(shutil, "which", lambda _name: str(fake))
    base_data = os.urandom(4096)
    target_data = changed(base_data)
    base = write(tmp_path / "base", base_data)
    target = write(tmp_path / "target", target_data)
    with pytest.raises(
        DeltaUnavailable, match=r"^zstd failed \(exit 1\): No space left \["
    ) as caught:
        delta_for(base, sha(base_data), target, sha(target_data), tmp_path / "store")
    assert "\n" not in str(caught.value)
    assert list((tmp_path / "store" / "deltas").iterdir()) == [
        tmp_path / "store" / "deltas" / f"{sha(base_data)}-{sha(target_data)}.lock"
    ]


def stored(tmp_path: Path, rootfs: bytes) -> tuple[Path, Any]:
    folder = release(tmp_path / "running", rootfs)
    root = keep(folder, tmp_path / "store")
    return root, find(manifest_sha256(folder), root)


@UNIT
def test_choose_without_base(tmp_path: Path) -> None:
    target = write(tmp_path / "target", b"x" * 100)
    reason = choose(None, "rootfs", target, sha(b"x" * 100), 100, 1 << 20, tmp_path)
    assert reason == "the host does not hold the release in the board's running slot"


@UNIT
def test_choose_with_unknown_memory(tmp_path: Path) -> None:
    rootfs = os.urandom(4096)
    _, base = stored(tmp_path, rootfs)
    target = write(tmp_path / "target", changed(rootfs))
    reason = choose(base, "rootfs", target, sha(changed(rootfs)), 4096, None)
    assert reason == "the board does not report its free memory"


@UNIT
@pytest.mark.parametrize(
    ("available_kib", "reason"),
    [
        (2048, "the board has 2 MiB free; applying this delta needs 4 MiB"),
        # Half of it is over 2 MiB, but the board's agent caps its decoder's window at a
        # power of two within half its free memory: 2 MiB needs 4096 KiB free.
        (4094, "the board has 3 MiB free; applying this delta needs 4 MiB"),
    ],
)
def test_choose_when_board_memory_is_too_small(
    tmp_path: Path, available_kib: int, reason: str
) -> None:
    rootfs = os.urandom(SIZE)
    root, base = stored(tmp_path, rootfs)
    target_data = changed(rootfs)
    target = write(tmp_path / "target", target_data)
    assert choose(base, "rootfs", target, sha(target_data), SIZE, available_kib) == reason
    assert not (root / "deltas").exists()  # refused before any zstd run


@ZSTD
def test_an_unchanged_payload_is_a_tiny_delta_from_its_own_store_copy(tmp_path: Path) -> None:
    # The store hard-links the release's payload: base and target are one file.
    rootfs = os.urandom(SIZE)
    _, base = stored(tmp_path, rootfs)
    same = base.payload("rootfs")
    assert same is not None
    delta = choose(base, "rootfs", same, sha(rootfs), SIZE, 1 << 20)
    assert isinstance(delta, Delta), delta
    assert delta.size < 1000


@ZSTD
def test_choose_when_delta_is_not_worth_it(tmp_path: Path) -> None:
    rootfs = os.urandom(SIZE)
    _, base = stored(tmp_path, rootfs)
    other = os.urandom(SIZE)
    target = write(tmp_path / "target", other)
    reason = choose(base, "rootfs", target, sha(other), SIZE, 1 << 20)
    assert isinstance(reason, str)
    assert reason.startswith("the delta (") and reason.endswith(f"payload ({SIZE} bytes)")


@ZSTD
def test_choose_sends_a_delta(tmp_path: Path) -> None:
    rootfs = os.urandom(SIZE)
    root, base = stored(tmp_path, rootfs)
    target_data = changed(rootfs)
    target = write(tmp_path / "target", target_data)
    delta = choose(base, "rootfs", target, sha(target_data), SIZE, 4096)  # just enough
    assert isinstance(delta, Delta), delta
    assert delta.path.parent == root / "deltas"
    assert delta.base_sha == sha(rootfs) and delta.target_sha == sha(target_data)
    assert delta.size < WORTH * SIZE


@ZSTD
def test_choose_passes_on_delta_unavailable(tmp_path: Path) -> None:
    rootfs = os.urandom(SIZE)
    _, base = stored(tmp_path, rootfs)
    path = base.payload("rootfs")
    path.unlink()
    path.write_bytes(changed(rootfs, 1))  # right size, wrong bytes: found only by hashing
    target_data = changed(rootfs)
    target = write(tmp_path / "target", target_data)
    reason = choose(base, "rootfs", target, sha(target_data), SIZE, 1 << 20)
    assert reason == "the stored base payload does not match its hash"
