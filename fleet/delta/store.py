"""The host's store of the releases it built, so it holds the exact bytes a board's
running slot holds and can make a delta from them.

    ROOT/manifests/MANIFEST_SHA256.json   the manifest's bytes, as in the release folder
    ROOT/payloads/PAYLOAD_SHA256          the payloads, named by content
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from fleet import atomic
from fleet.errors import ReleaseError
from fleet.hashing import hash_file
from fleet.release import (
    MAX_MANIFEST,
    Manifest,
    Payload,
    manifest_from_bytes,
    read_manifest_bytes,
)

MANIFESTS = "manifests"
PAYLOADS = "payloads"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class StoreError(ValueError):
    """A release cannot be stored (a payload does not match its manifest)."""


def store_root() -> Path:
    if os.environ.get("FLEET_STORE"):
        return Path(os.environ["FLEET_STORE"]).absolute()
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "fleet" / "store"


def is_sha256(text: str) -> bool:
    # fullmatch: "$" would also accept a trailing newline, and the name becomes a path.
    return _HEX64.fullmatch(text) is not None


@dataclass(frozen=True)
class Kept:
    """A release in the store: its manifest and the SHA-256 of the manifest's bytes."""

    manifest: Manifest
    sha: str
    root: Path

    def payload(self, name: str) -> Path | None:
        """The stored file of payload ``name``, if present at its manifest's size. Only the
        size is checked: a full hash per board would be minutes of a rollout, so whoever
        reads the bytes (fleet.delta.make) hashes them once."""
        try:
            payload = self.manifest.payload(name)
        except ReleaseError:
            return None
        path = self.root / PAYLOADS / payload.sha256
        try:
            info = path.stat()
        except OSError:
            return None
        return path if info.st_size == payload.size else None


def keep(folder: Path, root: Path | None = None) -> Path:
    """Store the release in ``folder``; return the store's root. Raises ReleaseError for a
    folder that is not a release and StoreError for a payload that does not match."""
    root = store_root() if root is None else root
    data = read_manifest_bytes(folder)
    manifest = manifest_from_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    payloads = root / PAYLOADS
    payloads.mkdir(parents=True, exist_ok=True)
    # Every payload is staged and checked before any is published: a release that fails
    # the check leaves nothing in the store.
    staged: list[tuple[Path, Path]] = []
    try:
        for payload in manifest.payloads:
            final = payloads / payload.sha256
            if _present(final, payload):
                continue
            tmp = _stage(folder / payload.file, payloads, payload)
            staged.append((tmp, final))
        for tmp, final in staged:
            os.replace(tmp, final)
        staged.clear()
    finally:
        for tmp, _ in staged:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    atomic.fsync_dir(payloads)
    # Last: a manifest in the store promises that its payloads are there too.
    target = root / MANIFESTS / f"{sha}.json"
    if not target.exists():
        atomic.write_bytes(target, data)
    return root


def find(manifest_sha: str, root: Path | None = None) -> Kept | None:
    """The stored release whose manifest has SHA-256 ``manifest_sha`` (as a board reports
    it, so untrusted), or None."""
    if not is_sha256(manifest_sha):
        return None
    root = store_root() if root is None else root
    path = root / MANIFESTS / f"{manifest_sha}.json"
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_MANIFEST + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc.strerror}") from exc
    # A damaged or hand-edited store must not pass for the board's release.
    if hashlib.sha256(data).hexdigest() != manifest_sha:
        return None
    try:
        manifest = manifest_from_bytes(data)
    except ReleaseError:
        return None
    return Kept(manifest=manifest, sha=manifest_sha, root=root)


def _present(path: Path, payload: Payload) -> bool:
    try:
        return path.stat().st_size == payload.size
    except FileNotFoundError:
        return False


def _stage(source: Path, folder: Path, payload: Payload) -> Path:
    """A temp file in ``folder`` holding ``source``, checked against ``payload``."""
    tmp = folder / f".{payload.sha256}.{secrets.token_hex(8)}.tmp"
    try:
        try:
            os.link(source, tmp)
        except FileNotFoundError as exc:
            raise StoreError(f"{source}: payload {payload.name} is missing") from exc
        except OSError:
            # Another filesystem (EXDEV) or one without hard links: copy instead.
            shutil.copyfile(source, tmp)
        # The staged file is what gets published, so it is what is checked.
        size, sha = hash_file(tmp)
        if size != payload.size or sha != payload.sha256:
            raise StoreError(
                f"{source}: payload {payload.name} does not match the manifest's size and SHA-256"
            )
        with tmp.open("rb") as handle:
            os.fsync(handle.fileno())
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if isinstance(exc, OSError):
            raise StoreError(f"cannot store {source}: {exc.strerror or exc}") from exc
        raise
    return tmp
