"""The two signed documents of a pull store, in fleet's canonical JSON (signing/canonical),
so that the board reads fields with sed and awk and checks signatures with signify, as it
does for a release's manifest (docs/pull.md).

    groups/G/targets/V.json          the targets document, version V: for each board
                                     profile the release, its manifest's SHA-256 and size,
                                     and the percentage of the group it goes to; signed by
                                     the release keys (offline) as groups/G/targets/V.KEYID.sig
    groups/G/timestamp.sig           the timestamp: signify's embedded form (the signature's
                                     two lines, then the document), signed by the online
                                     timestamp key; names the current targets version and
                                     its SHA-256, expires soon

Roles as in TUF: the targets key says what a group runs; the timestamp key can only say
which signed targets document is current, and for how long.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from fleet.errors import ReleaseError
from signing.canonical import CanonicalError, canonical_bytes, parse_canonical
from signing.errors import SigningError
from signing.keys import PublicKey, SecretKey
from signing.signature import Signature, parse_signature, sign, signature_valid

TARGETS_TYPE = "fleet-targets"
TIMESTAMP_TYPE = "fleet-timestamp"
# What a board takes from the store for each (fleet/device/pull has the same bounds).
MAX_TIMESTAMP = 4096
MAX_TARGETS = 64 << 10
# A delta index (fleet.pull.deltas): a line is about 220 bytes, so some 70 bases of two
# payloads each.
MAX_DELTA_INDEX = 32 << 10
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class DocumentError(ReleaseError):
    """A document from the store is malformed, unsigned, stale or not for us."""


def check_group(name: str) -> str:
    if not _NAME.match(name):
        raise DocumentError(
            f"group {name!r}: lower-case letters, digits, '.', '_' and '-', up to 63"
        )
    return name


@dataclass(frozen=True)
class Target:
    """One board profile's entry in a targets document."""

    release: int
    version: str
    manifest: str  # SHA-256 of manifest.json: the object's name in objects/
    manifest_size: int
    percent: int
    deltas: str = ""  # SHA-256 of its delta index in objects/ (fleet.pull.deltas), or ""
    deltas_size: int = 0

    def as_document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "manifest": self.manifest,
            "manifest_size": self.manifest_size,
            "percent": self.percent,
            "release": self.release,
            "version": self.version,
        }
        if self.deltas:
            doc["deltas"] = self.deltas
            doc["deltas_size"] = self.deltas_size
        return doc


@dataclass(frozen=True)
class Targets:
    group: str
    version: int
    expires: int  # Unix time
    targets: dict[str, Target]  # by board profile

    def to_bytes(self) -> bytes:
        return canonical_bytes(
            {
                "expires": self.expires,
                "group": self.group,
                "targets": {p: t.as_document() for p, t in sorted(self.targets.items())},
                "type": TARGETS_TYPE,
                "version": self.version,
            }
        )


@dataclass(frozen=True)
class Timestamp:
    group: str
    version: int
    expires: int
    targets_version: int
    targets_sha256: str
    targets_size: int

    def to_bytes(self) -> bytes:
        return canonical_bytes(
            {
                "expires": self.expires,
                "group": self.group,
                "targets_sha256": self.targets_sha256,
                "targets_size": self.targets_size,
                "targets_version": self.targets_version,
                "type": TIMESTAMP_TYPE,
                "version": self.version,
            }
        )


def _field(doc: dict[str, Any], key: str, kind: type, what: str) -> Any:
    value = doc.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise DocumentError(f"{what}: field {key!r} is missing or not a {kind.__name__}")
    return value


def _parse(data: bytes, kind: str, what: str) -> dict[str, Any]:
    try:
        doc = parse_canonical(data)
    except CanonicalError as exc:
        raise DocumentError(f"{what}: {exc}") from exc
    if doc.get("type") != kind:
        raise DocumentError(f"{what}: not a {kind} document")
    return doc


def parse_targets(data: bytes, what: str = "targets document") -> Targets:
    if len(data) > MAX_TARGETS:
        raise DocumentError(f"{what}: larger than {MAX_TARGETS} bytes")
    doc = _parse(data, TARGETS_TYPE, what)
    entries = _field(doc, "targets", dict, what)
    targets: dict[str, Target] = {}
    for profile, entry in entries.items():
        where = f"{what}: target {profile!r}"
        if not _NAME.match(profile) or not isinstance(entry, dict):
            raise DocumentError(f"{where} is malformed")
        sha = _field(entry, "manifest", str, where)
        percent = _field(entry, "percent", int, where)
        if not _HEX64.match(sha) or not 0 <= percent <= 100:
            raise DocumentError(f"{where}: bad manifest hash or percentage")
        deltas, deltas_size = "", 0
        if "deltas" in entry:
            deltas = _field(entry, "deltas", str, where)
            deltas_size = _field(entry, "deltas_size", int, where)
            if not _HEX64.match(deltas) or not 0 < deltas_size <= MAX_DELTA_INDEX:
                raise DocumentError(f"{where}: bad delta index hash or size")
        targets[profile] = Target(
            release=_field(entry, "release", int, where),
            version=_field(entry, "version", str, where),
            manifest=sha,
            manifest_size=_field(entry, "manifest_size", int, where),
            percent=percent,
            deltas=deltas,
            deltas_size=deltas_size,
        )
    return Targets(
        group=check_group(_field(doc, "group", str, what)),
        version=_field(doc, "version", int, what),
        expires=_field(doc, "expires", int, what),
        targets=targets,
    )


def parse_timestamp(data: bytes, what: str = "timestamp") -> Timestamp:
    doc = _parse(data, TIMESTAMP_TYPE, what)
    sha = _field(doc, "targets_sha256", str, what)
    if not _HEX64.match(sha):
        raise DocumentError(f"{what}: bad targets hash")
    return Timestamp(
        group=check_group(_field(doc, "group", str, what)),
        version=_field(doc, "version", int, what),
        expires=_field(doc, "expires", int, what),
        targets_version=_field(doc, "targets_version", int, what),
        targets_sha256=sha,
        targets_size=_field(doc, "targets_size", int, what),
    )


def embed(key: SecretKey, message: bytes, comment: str) -> bytes:
    """signify -S -e: the signature's two lines, then the message itself."""
    return sign(key, message).to_bytes(comment) + message


def open_embedded(data: bytes, keys: list[PublicKey], what: str) -> bytes:
    """signify -V -e: the message of ``data`` if one of ``keys`` signed it."""
    if len(data) > MAX_TIMESTAMP:
        raise DocumentError(f"{what}: larger than {MAX_TIMESTAMP} bytes")
    parts = data.split(b"\n", 2)
    if len(parts) != 3:
        raise DocumentError(f"{what}: not a signed document")
    try:
        signature = parse_signature(parts[0] + b"\n" + parts[1] + b"\n", what)
    except SigningError as exc:
        raise DocumentError(f"{what}: {exc}") from exc
    if not any(signature_valid(k, signature, parts[2]) for k in keys):
        raise DocumentError(f"{what}: not signed by a trusted timestamp key")
    return parts[2]


def detached(key: SecretKey, message: bytes, comment: str) -> tuple[str, bytes]:
    signature: Signature = sign(key, message)
    return signature.key_id, signature.to_bytes(comment)
