"""The release bundle on disk: ``manifest.json`` (the signed document, canonical bytes),
its signatures, and the slot payloads it names by size and SHA-256.

    RELEASE/
      manifest.json              canonical bytes; exactly what every signature covers
      signatures/KEYID.sig       one signify-format Ed25519 signature per key
      boot.vfat                  the slot's boot partition image (FAT)
      rootfs.squashfs            the slot's read-only root filesystem
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleet import atomic
from fleet.errors import ReleaseError
from signing.canonical import CanonicalError, canonical_bytes, parse_canonical

MANIFEST = "manifest.json"
# The board's agent takes no larger manifest (MAX_MANIFEST in fleet/device/agent); a real
# one is a few KiB.
MAX_MANIFEST = 256 << 10
SIGNATURES = "signatures"
FORMAT = 1
PAYLOAD_NAMES = ("boot", "rootfs")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_MAX_SIZE = 2**40
_HEX_SALT = re.compile(r"^(?:[0-9a-f]{2}){1,256}$")
VERITY_BLOCK = 4096
VERITY_ALGORITHM = "sha256"
_VERITY_FIELDS = ("algorithm", "block_size", "data_blocks", "hash_offset", "root_hash", "salt")


@dataclass(frozen=True)
class Payload:
    name: str  # "boot" or "rootfs": which partition of a slot it fills
    file: str  # file name inside the release folder
    size: int
    sha256: str


@dataclass(frozen=True)
class Health:
    http: str | None
    command: str | None
    port: int
    timeout: int


@dataclass(frozen=True)
class Verity:
    """The rootfs payload's dm-verity hash tree (format 1, no superblock): the squashfs
    fills ``data_blocks`` blocks, the tree starts at ``hash_offset`` and ends the payload.
    The slot's initramfs maps the root partition with these values."""

    root_hash: str  # 64 lowercase hex digits
    salt: str  # lowercase hex
    data_blocks: int
    hash_offset: int  # bytes from the payload's start; = data_blocks * block_size
    block_size: int = VERITY_BLOCK
    algorithm: str = VERITY_ALGORITHM

    @property
    def hash_start_block(self) -> int:
        return self.hash_offset // self.block_size


def verity_tree_size(data_blocks: int, block_size: int = VERITY_BLOCK) -> int:
    """Bytes of a format-1 sha256 hash tree over ``data_blocks`` blocks (one block: none)."""
    per_block = block_size // 32
    size = 0
    count = data_blocks
    while count > 1:
        count = -(-count // per_block)
        size += count * block_size
    return size


@dataclass(frozen=True)
class Manifest:
    app: str
    version: str
    release: int  # monotonic number, compared with the board's floor
    board: str
    arch: str
    payloads: tuple[Payload, ...]
    health: Health
    inputs: dict[str, Any] = field(default_factory=dict)
    verity: Verity | None = None  # the rootfs payload's hash tree; None before dm-verity

    def payload(self, name: str) -> Payload:
        for payload in self.payloads:
            if payload.name == name:
                return payload
        raise ReleaseError(f"manifest has no payload {name!r}")

    def to_document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "format": FORMAT,
            "app": {"name": self.app, "version": self.version},
            "release": self.release,
            "board": self.board,
            "arch": self.arch,
            "payloads": [
                {"name": p.name, "file": p.file, "size": p.size, "sha256": p.sha256}
                for p in self.payloads
            ],
            "health": {
                "http": self.health.http,
                "command": self.health.command,
                "port": self.health.port,
                "timeout": self.health.timeout,
            },
            "inputs": self.inputs,
        }
        if self.verity is not None:
            v = self.verity
            doc["verity"] = {
                "root_hash": v.root_hash,
                "salt": v.salt,
                "data_blocks": v.data_blocks,
                "hash_offset": v.hash_offset,
                "block_size": v.block_size,
                "algorithm": v.algorithm,
            }
        return doc

    def to_bytes(self) -> bytes:
        return canonical_bytes(self.to_document())


def manifest_from_bytes(data: bytes) -> Manifest:
    """Parse and validate untrusted manifest bytes; any defect is a ReleaseError."""
    try:
        doc = parse_canonical(data)
    except CanonicalError as exc:
        raise ReleaseError(f"malformed manifest: {exc}") from exc
    try:
        return _manifest_from_document(doc)
    except (KeyError, TypeError, ValueError) as exc:
        raise ReleaseError(f"malformed manifest: {exc}") from exc


def _want(doc: dict[str, Any], key: str, kind: type, where: str = "") -> Any:
    if key not in doc:
        raise ValueError(f"missing field {where}{key}")
    value = doc[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"field {where}{key} has the wrong type")
    return value


def _opt_str(doc: dict[str, Any], key: str, where: str) -> str | None:
    value = doc.get(key)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"field {where}{key} has the wrong type")
    return value


def _manifest_from_document(doc: dict[str, Any]) -> Manifest:
    known = {
        "format",
        "app",
        "release",
        "board",
        "arch",
        "payloads",
        "health",
        "inputs",
        "verity",
    }
    unknown = sorted(set(doc) - known)
    if unknown:
        raise ValueError(f"unknown field {unknown[0]}")
    if _want(doc, "format", int) != FORMAT:
        raise ValueError(f"unsupported format {doc['format']}")
    app = _want(doc, "app", dict)
    release = _want(doc, "release", int)
    if not 0 < release < 2**63:
        raise ValueError("field release out of range")
    payloads = []
    for index, item in enumerate(_want(doc, "payloads", list)):
        if not isinstance(item, dict):
            raise ValueError(f"payloads[{index}] is not an object")
        where = f"payloads[{index}]."
        payload = Payload(
            name=_want(item, "name", str, where),
            file=_want(item, "file", str, where),
            size=_want(item, "size", int, where),
            sha256=_want(item, "sha256", str, where),
        )
        if payload.name not in PAYLOAD_NAMES:
            raise ValueError(f"{where}name {payload.name!r} is not one of {PAYLOAD_NAMES}")
        if not _FILE.match(payload.file) or payload.file == MANIFEST:
            raise ValueError(f"{where}file {payload.file!r} is not a plain file name")
        if not 0 < payload.size < _MAX_SIZE:
            raise ValueError(f"{where}size out of range")
        if not _HEX64.match(payload.sha256):
            raise ValueError(f"{where}sha256 is not 64 lowercase hex digits")
        payloads.append(payload)
    names = sorted(p.name for p in payloads)
    if names != sorted(PAYLOAD_NAMES):
        raise ValueError(f"payloads must be exactly {', '.join(PAYLOAD_NAMES)}")
    if len({p.file for p in payloads}) != len(payloads):
        raise ValueError("two payloads name the same file")
    health = _want(doc, "health", dict)
    port = _want(health, "port", int, "health.")
    timeout = _want(health, "timeout", int, "health.")
    if not 0 < port < 65536 or not 0 < timeout < 86400:
        raise ValueError("health.port or health.timeout out of range")
    verity = None
    if "verity" in doc:
        verity = _verity_from_document(_want(doc, "verity", dict), payloads)
    return Manifest(
        app=_want(app, "name", str, "app."),
        version=_want(app, "version", str, "app."),
        release=release,
        board=_want(doc, "board", str),
        arch=_want(doc, "arch", str),
        payloads=tuple(payloads),
        health=Health(
            http=_opt_str(health, "http", "health."),
            command=_opt_str(health, "command", "health."),
            port=port,
            timeout=timeout,
        ),
        inputs=_want(doc, "inputs", dict),
        verity=verity,
    )


def _verity_from_document(item: dict[str, Any], payloads: list[Payload]) -> Verity:
    unknown = sorted(set(item) - set(_VERITY_FIELDS))
    if unknown:
        raise ValueError(f"unknown field verity.{unknown[0]}")
    where = "verity."
    verity = Verity(
        root_hash=_want(item, "root_hash", str, where),
        salt=_want(item, "salt", str, where),
        data_blocks=_want(item, "data_blocks", int, where),
        hash_offset=_want(item, "hash_offset", int, where),
        block_size=_want(item, "block_size", int, where),
        algorithm=_want(item, "algorithm", str, where),
    )
    if not _HEX64.match(verity.root_hash):
        raise ValueError("verity.root_hash is not 64 lowercase hex digits")
    if not _HEX_SALT.match(verity.salt):
        raise ValueError("verity.salt is not 1 to 256 bytes of lowercase hex")
    if verity.block_size != VERITY_BLOCK or verity.algorithm != VERITY_ALGORITHM:
        raise ValueError(f"verity must be {VERITY_ALGORITHM} with {VERITY_BLOCK}-byte blocks")
    if not 0 < verity.data_blocks < _MAX_SIZE // VERITY_BLOCK:
        raise ValueError("verity.data_blocks out of range")
    if verity.hash_offset != verity.data_blocks * verity.block_size:
        raise ValueError("verity.hash_offset is not where the data blocks end")
    rootfs = next(p for p in payloads if p.name == "rootfs")
    if rootfs.size != verity.hash_offset + verity_tree_size(verity.data_blocks):
        raise ValueError("verity does not describe the rootfs payload (its size differs)")
    return verity


def read_manifest_bytes(folder: Path) -> bytes:
    """The manifest's bytes, read with a bound: a release folder is untrusted input."""
    if not folder.is_dir():
        raise ReleaseError(f"{folder} is not a release folder")
    path = folder / MANIFEST
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_MANIFEST + 1)
    except FileNotFoundError as exc:
        raise ReleaseError(f"{folder}: not a release (no {MANIFEST})") from exc
    except OSError as exc:
        raise ReleaseError(f"cannot read {path}: {exc.strerror}") from exc
    if len(data) > MAX_MANIFEST:
        raise ReleaseError(f"malformed manifest: larger than {MAX_MANIFEST >> 10} KiB")
    return data


def manifest_sha256(folder: Path) -> str:
    """The SHA-256 of the manifest's bytes: how a board names the release a slot holds
    (its agent hashes the same bytes at install-manifest)."""
    return hashlib.sha256(read_manifest_bytes(folder)).hexdigest()


def load_manifest(folder: Path) -> Manifest:
    return manifest_from_bytes(read_manifest_bytes(folder))


def write_manifest(folder: Path, manifest: Manifest) -> None:
    atomic.write_bytes(folder / MANIFEST, manifest.to_bytes())
