"""``fleet publish``: a release into a pull store, in the order that keeps every reader
safe (docs/pull.md):

1. the payloads, the manifest and its signatures, under content-addressed names in
   ``objects/`` (immutable; an object already there is not sent again);
2. the group's new targets document, ``groups/G/targets/V.json``, and its signatures;
3. the timestamp naming that targets version.

A board follows the timestamp, so it never sees a document whose files are not there
yet. A publish cut short anywhere is finished by running it again: nothing a board can
reach was changed before step 3, and step 3 is one atomic write.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from fleet.errors import ReleaseError
from fleet.pull import deltas as dl
from fleet.pull import documents as d
from fleet.pull.store import IMMUTABLE, SHORT, S3Store, Store
from fleet.release import Manifest, manifest_from_bytes, read_manifest_bytes
from fleet.trust import check_payloads, read_signatures
from signing.canonical import canonical_bytes
from signing.errors import SigningError
from signing.keys import PublicKey, SecretKey
from signing.signature import parse_signature, signature_valid

REPORT_MAX = 16 << 10
Say = Callable[[str], None]


def objects_name(sha: str) -> str:
    return f"objects/{sha}"


def signature_name(manifest_sha: str, key_id: str) -> str:
    return f"objects/{manifest_sha}.{key_id}.sig"


def targets_name(group: str, version: int) -> str:
    return f"groups/{group}/targets/{version}.json"


def targets_sig_name(group: str, version: int, key_id: str) -> str:
    return f"groups/{group}/targets/{version}.{key_id}.sig"


def timestamp_name(group: str) -> str:
    return f"groups/{group}/timestamp.sig"


def grant_name(group: str, board: str) -> str:
    return f"groups/{group}/grants/{board}.json"


def report_name(board: str) -> str:
    return f"reports/{board}.json"


@dataclass(frozen=True)
class Current:
    """What the store says a group runs now (both documents verified)."""

    timestamp: d.Timestamp | None
    targets: d.Targets | None


def read_current(
    store: Store, group: str, timestamp_keys: list[PublicKey], targets_keys: list[PublicKey]
) -> Current:
    """The group's current documents, checked as a board checks them (signatures, hash,
    size). A store that holds something no key of ours signed is refused: a publish on
    top of it would hide the tampering."""
    raw = store.get(timestamp_name(group), d.MAX_TIMESTAMP)
    if raw is None:
        return Current(None, None)
    stamp = d.parse_timestamp(
        d.open_embedded(raw, timestamp_keys, f"{store.url}: {timestamp_name(group)}")
    )
    name = targets_name(group, stamp.targets_version)
    body = store.get(name, d.MAX_TARGETS)
    if body is None or len(body) != stamp.targets_size:
        raise d.DocumentError(f"{store.url}: {name} is missing or not the size the timestamp says")
    if hashlib.sha256(body).hexdigest() != stamp.targets_sha256:
        raise d.DocumentError(f"{store.url}: {name} does not match the timestamp's hash")
    signed = False
    for key in targets_keys:
        sig = store.get(targets_sig_name(group, stamp.targets_version, key.key_id), 4096)
        if sig is not None and _valid(key, sig, body):
            signed = True
    if not signed:
        raise d.DocumentError(f"{store.url}: {name} is not signed by the targets key")
    targets = d.parse_targets(body, f"{store.url}: {name}")
    if targets.group != group or stamp.group != group:
        raise d.DocumentError(f"{store.url}: the documents of group {group} name another group")
    return Current(stamp, targets)


def _valid(key: PublicKey, sig: bytes, body: bytes) -> bool:
    try:
        return signature_valid(key, parse_signature(sig), body)
    except SigningError:
        return False


@dataclass(frozen=True)
class Published:
    group: str
    profile: str
    release: int
    version: str
    percent: int
    targets_version: int
    timestamp_version: int
    uploaded: int  # objects sent
    skipped: int  # objects already in the store
    bytes_sent: int
    changed: bool  # False: the store already said exactly this
    deltas: int = 0  # deltas the targets entry lists (from every base)

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def upload_release(store: Store, folder: Path, say: Say) -> tuple[str, int, int, int]:
    """Step 1. Returns (manifest sha, uploaded, skipped, bytes sent)."""
    data = read_manifest_bytes(folder)
    manifest = manifest_from_bytes(data)
    for check in check_payloads(folder, manifest):
        if check.problem:
            raise ReleaseError(f"{folder}: refusing to publish: {check.problem}")
    signatures = read_signatures(folder)
    if not signatures:
        raise ReleaseError(f"{folder}: refusing to publish an unsigned release")
    sha = hashlib.sha256(data).hexdigest()
    uploaded = skipped = sent = 0
    for payload in manifest.payloads:
        name = objects_name(payload.sha256)
        if store.exists(name) == payload.size:
            skipped += 1
            continue
        say(f"uploading {payload.file} ({payload.size} bytes) as {name}")
        store.put_file(name, folder / payload.file, IMMUTABLE)
        uploaded += 1
        sent += payload.size
    small = {signature_name(sha, key_id): sig for key_id, sig in signatures.items()}
    small[objects_name(sha)] = data  # the manifest last: it is what a board asks for first
    for name, body in small.items():
        if store.exists(name) == len(body):
            skipped += 1
            continue
        store.put_bytes(name, body, IMMUTABLE)
        uploaded += 1
        sent += len(body)
    return sha, uploaded, skipped, sent


def _next_version(previous: int | None, now: int) -> int:
    # Clock-based so that a store rebuilt from nothing still goes forward for every board
    # that saw the old one; +1 so that two publishes in one second still rise.
    return max((previous or 0) + 1, now)


def publish(
    store: Store,
    folder: Path,
    group: str,
    percent: int,
    targets_keys: Sequence[SecretKey],
    timestamp_key: SecretKey,
    expires_s: int,
    timestamp_expires_s: int,
    say: Say = lambda _: None,
    now: Callable[[], float] = time.time,
    delta_from: Sequence[Path] = (),
    deltas: bool = True,
) -> Published:
    """Steps 1 to 3 for the release in ``folder``. With ``deltas``, each payload also goes
    as a delta from the release the group offered this profile before and from each
    release folder in ``delta_from`` (fleet.pull.deltas)."""
    d.check_group(group)
    if not 0 <= percent <= 100:
        raise ReleaseError(f"--percent {percent}: from 0 to 100")
    data = read_manifest_bytes(folder)
    manifest = manifest_from_bytes(data)
    # Every --delta-from is read and checked before anything is uploaded.
    named = [dl.base_of_folder(path, manifest) for path in delta_from] if deltas else []
    current = read_current(store, group, [timestamp_key.public], [k.public for k in targets_keys])
    sha, uploaded, skipped, sent = upload_release(store, folder, say)
    old = current.targets
    before = old.targets.get(manifest.board) if old is not None else None
    if before is not None and before.release > manifest.release:
        raise ReleaseError(
            f"group {group} already has release {before.release} for {manifest.board}; "
            f"boards refuse release {manifest.release}"
        )
    index: list[dl.Entry] = []
    if deltas:
        index, delta_bytes = _deltas(store, folder, manifest, sha, before, named, say)
        sent += delta_bytes
    listing = dl.index_bytes(index)
    if len(listing) > d.MAX_DELTA_INDEX:
        raise ReleaseError(
            f"the delta index of {len(index)} deltas is over the boards' bound of "
            f"{d.MAX_DELTA_INDEX} bytes: name fewer --delta-from releases"
        )
    index_sha = hashlib.sha256(listing).hexdigest() if index else ""
    if index and store.exists(objects_name(index_sha)) != len(listing):
        store.put_bytes(objects_name(index_sha), listing, IMMUTABLE)
        uploaded += 1
        sent += len(listing)
    entry = d.Target(
        release=manifest.release,
        version=manifest.version,
        manifest=sha,
        manifest_size=len(data),
        percent=percent,
        deltas=index_sha,
        deltas_size=len(listing) if index else 0,
    )
    clock = int(now())
    changed = old is None or old.targets.get(manifest.board) != entry
    if changed:
        targets = d.Targets(
            group=group,
            version=_next_version(old.version if old else None, clock),
            expires=clock + expires_s,
            targets={**(old.targets if old else {}), manifest.board: entry},
        )
        _write_targets(store, targets, targets_keys)
    else:
        assert old is not None
        targets = old
    stamp = write_timestamp(
        store, current.timestamp, targets, timestamp_key, clock, timestamp_expires_s
    )
    say(
        f"group {group}: {manifest.board} release {manifest.release} at {percent}% "
        f"(targets {targets.version}, timestamp {stamp.version})"
    )
    return Published(
        group,
        manifest.board,
        manifest.release,
        manifest.version,
        percent,
        targets.version,
        stamp.version,
        uploaded,
        skipped,
        sent,
        changed,
        len(index),
    )


# How many of the bases the group offered before a new release keeps: the previous
# release and the newest it had deltas from. Older boards fetch whole payloads, unless
# named with --delta-from.
CARRIED = 3


def _index_of(store: Store, target: d.Target) -> list[dl.Entry]:
    """The delta index a targets entry names, if the store has it as signed for."""
    if not target.deltas:
        return []
    raw = store.get(objects_name(target.deltas), d.MAX_DELTA_INDEX)
    if raw is None or hashlib.sha256(raw).hexdigest() != target.deltas:
        return []
    return dl.parse_index(raw, f"{store.url}: {objects_name(target.deltas)}")


def _deltas(
    store: Store,
    folder: Path,
    manifest: Manifest,
    sha: str,
    before: d.Target | None,
    named: Sequence[dl.Base],
    say: Say,
) -> tuple[list[dl.Entry], int]:
    """The delta index of the release, from these bases:

    - the group's previous release of this profile, and the bases its own index listed
      (boards a staged publish left behind), the newest CARRIED of them;
    - the ``named`` ones (--delta-from).

    Publishing the group's current release again keeps the deltas its index already
    lists, so a second publish (a new percentage, a retry) never takes them away."""
    bases: dict[str, dl.Base] = {}
    kept: list[dl.Entry] = []
    previous = _index_of(store, before) if before is not None else []
    if before is not None and before.manifest != sha:
        found = [dl.load_base(store, m) for m in [before.manifest, *{e.base for e in previous}]]
        if found[0] is None:
            say(f"no deltas from release {before.release}: its manifest is in no store at hand")
        usable = sorted((b for b in found if b is not None), key=lambda b: -b.manifest.release)
        bases = {b.manifest_sha: b for b in usable[:CARRIED]}
    else:
        kept = previous
    for base in named:
        bases.setdefault(base.manifest_sha, base)
    fresh = [
        b
        for b in bases.values()
        if b.manifest_sha != sha
        and b.manifest.release < manifest.release
        and not any(e.base == b.manifest_sha for e in kept)
    ]
    made, sent = dl.make_deltas(store, folder, manifest, fresh, say)
    return kept + made, sent


def _write_targets(store: Store, targets: d.Targets, keys: Sequence[SecretKey]) -> None:
    body = targets.to_bytes()
    for key in keys:
        key_id, sig = d.detached(key, body, f"fleet targets {targets.group} {targets.version}")
        store.put_bytes(targets_sig_name(targets.group, targets.version, key_id), sig, IMMUTABLE)
    store.put_bytes(targets_name(targets.group, targets.version), body, IMMUTABLE)


def write_timestamp(
    store: Store,
    previous: d.Timestamp | None,
    targets: d.Targets,
    key: SecretKey,
    clock: int,
    expires_s: int,
) -> d.Timestamp:
    body = targets.to_bytes()
    stamp = d.Timestamp(
        group=targets.group,
        version=_next_version(previous.version if previous else None, clock),
        expires=clock + expires_s,
        targets_version=targets.version,
        targets_sha256=hashlib.sha256(body).hexdigest(),
        targets_size=len(body),
    )
    signed = d.embed(key, stamp.to_bytes(), f"fleet timestamp {targets.group} {stamp.version}")
    store.put_bytes(timestamp_name(targets.group), signed, SHORT)
    return stamp


def refresh(
    store: Store,
    group: str,
    timestamp_key: SecretKey,
    targets_keys: Sequence[PublicKey],
    expires_s: int,
    now: Callable[[], float] = time.time,
) -> d.Timestamp:
    """A new timestamp for the current targets (the timer's job: the timestamp key is
    online, the targets keys need not be)."""
    current = read_current(store, group, [timestamp_key.public], list(targets_keys))
    if current.targets is None:
        raise ReleaseError(f"{store.url}: group {group} has nothing published to refresh")
    return write_timestamp(
        store, current.timestamp, current.targets, timestamp_key, int(now()), expires_s
    )


def set_percent(
    store: Store,
    group: str,
    profile: str,
    percent: int,
    targets_keys: Sequence[SecretKey],
    timestamp_key: SecretKey,
    expires_s: int,
    timestamp_expires_s: int,
    now: Callable[[], float] = time.time,
) -> d.Targets:
    """The next wave of a staged publish: the same release to more of the group."""
    current = read_current(store, group, [timestamp_key.public], [k.public for k in targets_keys])
    if current.targets is None or profile not in current.targets.targets:
        raise ReleaseError(f"group {group} has no release for {profile}")
    clock = int(now())
    entry = replace(current.targets.targets[profile], percent=percent)
    targets = d.Targets(
        group,
        _next_version(current.targets.version, clock),
        clock + expires_s,
        {**current.targets.targets, profile: entry},
    )
    _write_targets(store, targets, targets_keys)
    write_timestamp(store, current.timestamp, targets, timestamp_key, clock, timestamp_expires_s)
    return targets


def write_grants(store: Store, group: str, boards: Sequence[str], expires_s: int) -> int:
    """Per-board write grants for S3 stores: a presigned POST for exactly
    ``reports/BOARD.json`` (at most REPORT_MAX bytes), renewed with every publish and
    refresh. A folder store has no grants: its web server decides who may write."""
    if not isinstance(store, S3Store):
        return 0
    for board in boards:
        grant = store.presigned_post(report_name(board), REPORT_MAX, expires_s)
        body = canonical_bytes(
            {"fields": dict(sorted(grant["fields"].items())), "url": grant["url"]}
        )
        store.put_bytes(grant_name(group, board), body, SHORT)
    return len(boards)
