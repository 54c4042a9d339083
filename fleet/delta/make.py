"""Deltas between two payloads, made with ``zstd --patch-from`` and cached in the store:

    ROOT/deltas/BASE_SHA256-TARGET_SHA256.zst

A board applies one with ``zstd -d --patch-from=<its running slot's payload>``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import zstandard

from fleet import atomic
from fleet.delta.store import is_sha256, store_root
from fleet.hashing import hash_file
from fleet.run import quote

DELTAS = "deltas"
LEVEL = 3
MIN_WINDOW_LOG = 10  # zstd's smallest window
MAX_WINDOW_LOG = 31  # zstd's largest window on a 64-bit host
# The window must reach across the whole base, and 2**31 is the largest, so payloads
# beyond 1 GiB (the window is one bit over the size) have no delta.
MAX_SIZE = 1 << 30
_FRAME_HEADER_MAX = 18
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Delta:
    path: Path
    size: int
    window_log: int  # the frame's window, rounded up to a power of two
    base_sha: str
    target_sha: str


class DeltaUnavailable(Exception):
    """No delta for this pair; ``str()`` is the one-line reason."""


def window_log_for(size: int) -> int:
    """The window (log2) a delta between payloads of at most ``size`` bytes is made with."""
    if size > MAX_SIZE:
        raise DeltaUnavailable("payloads over 1 GiB are beyond zstd's largest window")
    return min(MAX_WINDOW_LOG, max(MIN_WINDOW_LOG, ceil_log2(size) + 1))


# One lock per pair in this process, and a lock file per pair for the other processes:
# a rollout asks for the same pair from hundreds of board threads, and it is made once.
_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def delta_for(
    base_file: Path,
    base_sha: str,
    target_file: Path,
    target_sha: str,
    root: Path | None = None,
) -> Delta:
    """The delta that turns ``base_file`` into ``target_file``, from the cache or made now.
    Raises DeltaUnavailable with the reason there is none."""
    if not is_sha256(base_sha) or not is_sha256(target_sha):
        raise DeltaUnavailable("a payload hash is not 64 lowercase hex digits")
    root = store_root() if root is None else root
    deltas = root / DELTAS
    key = f"{base_sha}-{target_sha}"
    path = deltas / f"{key}.zst"
    found = _cached(path, base_sha, target_sha)
    if found is not None:
        return found
    deltas.mkdir(parents=True, exist_ok=True)
    with _thread_lock(key), _file_lock(deltas / f"{key}.lock"):
        # Another thread or process may have made it while this one waited.
        found = _cached(path, base_sha, target_sha)
        if found is not None:
            return found
        _make(base_file, base_sha, target_file, target_sha, path)
    found = _cached(path, base_sha, target_sha)
    if found is None:
        raise DeltaUnavailable(f"the delta just made at {path} cannot be read back")
    return found


def _make(base: Path, base_sha: str, target: Path, target_sha: str, path: Path) -> None:
    zstd = shutil.which("zstd")
    if zstd is None:
        raise DeltaUnavailable("zstd not found: install the Debian package zstd")
    base_size = _size(base, "base")
    target_size = _size(target, "target")
    window = window_log_for(max(base_size, target_size))
    # A delta from the wrong base would decode to garbage on the board, and the board
    # learns that only after writing the slot.
    if hash_file(base)[1] != base_sha:
        raise DeltaUnavailable("the stored base payload does not match its hash")
    if hash_file(target)[1] != target_sha:
        raise DeltaUnavailable("the target payload does not match its hash")
    fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        # -f: the temp file exists already (mkstemp made it, so its name is ours). The
        # target comes on stdin: zstd refuses a file that is its own dictionary, and an
        # unchanged payload in the store is a hard link to the release's own file.
        with target.open("rb") as source:
            _zstd(
                [
                    zstd,
                    "-q",
                    "-f",
                    "--no-progress",
                    f"-{LEVEL}",
                    f"--long={window}",
                    f"--patch-from={base}",
                    f"--stream-size={target_size}",
                    "-o",
                    str(tmp),
                ],
                source,
            )
        # Decode it as the board will before anyone can be sent it.
        if _decoded_sha(zstd, base, tmp) != target_sha:
            raise DeltaUnavailable("the delta does not decode to the target payload")
        with tmp.open("rb") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    atomic.fsync_dir(path.parent)


def _zstd(argv: Sequence[str], stdin: IO[bytes] | None = None) -> None:
    try:
        proc = subprocess.run(argv, stdin=stdin, capture_output=True, check=False)
    except OSError as exc:
        raise DeltaUnavailable(f"cannot start zstd: {exc.strerror}") from exc
    if proc.returncode != 0:
        raise DeltaUnavailable(_failure(proc.returncode, proc.stderr, argv))


def _decoded_sha(zstd: str, base: Path, delta: Path) -> str:
    # --long=31: accept any window the encoder chose. Streamed through the hash, since a
    # payload may be as large as the host's memory.
    argv = [zstd, "-d", "-q", "--no-progress", f"--patch-from={base}", "--long=31", "-c"]
    argv.append(str(delta))
    digest = hashlib.sha256()
    # stderr to a file, not a pipe: a pipe nobody reads while stdout drains could fill.
    with tempfile.TemporaryFile() as errors:
        try:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=errors)
        except OSError as exc:
            raise DeltaUnavailable(f"cannot start zstd: {exc.strerror}") from exc
        with proc:
            assert proc.stdout is not None
            while block := proc.stdout.read(_CHUNK):
                digest.update(block)
        if proc.returncode != 0:
            errors.seek(0)
            raise DeltaUnavailable(_failure(proc.returncode, errors.read(), argv))
    return digest.hexdigest()


def _failure(code: int, stderr: bytes, argv: Sequence[str]) -> str:
    words = stderr.decode(errors="replace").strip().splitlines()
    last = words[-1].strip() if words else "no output"
    return f"zstd failed (exit {code}): {last} [command: {quote(argv)}]"


def _cached(path: Path, base_sha: str, target_sha: str) -> Delta | None:
    try:
        with path.open("rb") as handle:
            header = handle.read(_FRAME_HEADER_MAX)
            size = os.fstat(handle.fileno()).st_size
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DeltaUnavailable(f"cannot read {path}: {exc.strerror}") from exc
    try:
        window = zstandard.get_frame_parameters(header).window_size
    except zstandard.ZstdError as exc:
        raise DeltaUnavailable(f"{path} is not a zstd frame ({exc}): delete it") from exc
    return Delta(
        path=path,
        size=size,
        window_log=max(MIN_WINDOW_LOG, ceil_log2(window)),
        base_sha=base_sha,
        target_sha=target_sha,
    )


def _size(path: Path, what: str) -> int:
    try:
        return path.stat().st_size
    except OSError as exc:
        raise DeltaUnavailable(f"cannot read the {what} payload {path}: {exc.strerror}") from exc


def ceil_log2(value: int) -> int:
    return max(0, value - 1).bit_length()


@contextlib.contextmanager
def _thread_lock(key: str) -> Iterator[None]:
    with _locks_guard:
        lock = _locks.setdefault(key, threading.Lock())
    with lock:
        yield


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    # The lock file stays: removing it would let a process lock a file another has
    # just unlinked, and both would make the delta.
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
