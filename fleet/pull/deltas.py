"""Deltas in a pull store: what lets a pulling board fetch only what changed (docs/pull.md).

For each release a board may run (the one the group offered before, and any named with
``--delta-from``), ``fleet publish`` makes a ``zstd --patch-from`` delta of each payload
(fleet.delta.make, cached in the host's store), uploads it as ``objects/SHA256`` and lists
it in a delta index, itself an object:

    BASE_MANIFEST_SHA256 PAYLOAD BASE_SIZE DELTA_SHA256 DELTA_SIZE

one line per delta, sorted. The targets entry names the index by hash and size, so every
byte a board feeds its decoder was signed for, through the targets document, and the
board still checks what the delta rebuilt against the release's signed manifest. A board
whose running release has no line, or whose delta fails, fetches the payload whole.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from fleet.delta import store as kept
from fleet.delta.make import DeltaUnavailable, delta_for
from fleet.errors import ReleaseError
from fleet.hashing import hash_file
from fleet.pull import documents as d
from fleet.pull.store import IMMUTABLE, Store
from fleet.release import MAX_MANIFEST, Manifest, manifest_from_bytes, read_manifest_bytes

_LINE = re.compile(r"^([0-9a-f]{64}) ([a-z0-9_-]{1,32}) ([0-9]+) ([0-9a-f]{64}) ([0-9]+)$")
Say = Callable[[str], None]


@dataclass(frozen=True)
class Entry:
    """One delta: payload ``payload`` of the release whose manifest is ``base``."""

    base: str  # SHA-256 of the base release's manifest, as its board reports it
    payload: str
    base_size: int
    sha256: str  # the delta object's name in objects/
    size: int

    def line(self) -> str:
        return f"{self.base} {self.payload} {self.base_size} {self.sha256} {self.size}\n"


@dataclass(frozen=True)
class Base:
    """A release boards may run, that deltas are made from."""

    manifest_sha: str
    manifest: Manifest
    folder: Path | None = None  # a release folder that holds its payloads


def index_bytes(entries: Sequence[Entry]) -> bytes:
    return "".join(sorted(e.line() for e in entries)).encode()


def parse_index(data: bytes, what: str = "delta index") -> list[Entry]:
    """The index as a board reads it; anything else is refused whole."""
    if len(data) > d.MAX_DELTA_INDEX:
        raise ReleaseError(f"{what}: larger than {d.MAX_DELTA_INDEX} bytes")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as exc:
        raise ReleaseError(f"{what}: not ASCII") from exc
    if text and not text.endswith("\n"):
        raise ReleaseError(f"{what}: its last line is cut off")
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        found = _LINE.match(line)
        if found is None:
            raise ReleaseError(f"{what}: line {number} is malformed")
        base, payload, base_size, sha, size = found.groups()
        entries.append(Entry(base, payload, int(base_size), sha, int(size)))
    return entries


def load_base(store: Store, manifest_sha: str) -> Base | None:
    """The release with manifest ``manifest_sha``: from the host's store, else from the
    pull store's objects (checked against the hash). None if neither has it."""
    found = kept.find(manifest_sha)
    if found is not None:
        return Base(manifest_sha, found.manifest)
    data = store.get(f"objects/{manifest_sha}", MAX_MANIFEST)
    if data is None or hashlib.sha256(data).hexdigest() != manifest_sha:
        return None
    return Base(manifest_sha, manifest_from_bytes(data))


def base_of_folder(folder: Path, target: Manifest) -> Base:
    """``--delta-from FOLDER``: a release folder as a base for ``target``."""
    data = read_manifest_bytes(folder)
    manifest = manifest_from_bytes(data)
    if manifest.board != target.board:
        raise ReleaseError(
            f"--delta-from {folder}: release {manifest.release} is for {manifest.board}, "
            f"this one for {target.board}"
        )
    return Base(hashlib.sha256(data).hexdigest(), manifest, folder)


def make_deltas(
    store: Store,
    folder: Path,
    target: Manifest,
    bases: Sequence[Base],
    say: Say,
) -> tuple[list[Entry], int]:
    """Upload each base's deltas to ``target`` (the release in ``folder``); return the
    index entries and the bytes sent. A delta that cannot be made, or is no smaller than
    its payload, is left out: those boards fetch that payload whole."""
    entries: list[Entry] = []
    sent = 0
    with tempfile.TemporaryDirectory(prefix="fleet-publish-") as tmp:
        for base in bases:
            for payload in target.payloads:
                try:
                    old = base.manifest.payload(payload.name)
                except ReleaseError:
                    continue
                source = _base_file(store, base, payload.name, Path(tmp))
                if source is None:
                    say(
                        f"no delta for {payload.name} from release {base.manifest.release}: "
                        "its payload is in no folder or store at hand"
                    )
                    continue
                try:
                    delta = delta_for(source, old.sha256, folder / payload.file, payload.sha256)
                except DeltaUnavailable as exc:
                    say(f"no delta for {payload.name} from release {base.manifest.release}: {exc}")
                    continue
                if delta.size >= payload.size:
                    continue
                sha = hash_file(delta.path)[1]
                name = f"objects/{sha}"
                if store.exists(name) != delta.size:
                    say(
                        f"uploading the delta of {payload.name} from release "
                        f"{base.manifest.release} ({delta.size} bytes)"
                    )
                    store.put_file(name, delta.path, IMMUTABLE)
                    sent += delta.size
                entries.append(Entry(base.manifest_sha, payload.name, old.size, sha, delta.size))
    return entries, sent


def _base_file(store: Store, base: Base, name: str, tmp: Path) -> Path | None:
    """The base's payload ``name``: from its folder, the host's store or the pull store.
    delta_for hashes it before it trusts it."""
    payload = base.manifest.payload(name)
    if base.folder is not None:
        beside = base.folder / payload.file
        if beside.is_file() and beside.stat().st_size == payload.size:
            return beside
    found = kept.find(base.manifest_sha)
    stored = found.payload(name) if found is not None else None
    if stored is not None:
        return stored
    data = store.get(f"objects/{payload.sha256}", payload.size)
    if data is None or len(data) != payload.size:
        return None
    fetched = tmp / payload.sha256
    fetched.write_bytes(data)
    return fetched
