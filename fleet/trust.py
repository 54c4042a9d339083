"""Trust on the host: key files, trust folders and release folders on disk, handed to the
trust core in ``signing`` as bytes. Every failure becomes a FleetError whose message says
exactly what failed.

A trust folder holds ``*.pub`` keys (signify format, any file name), an optional
``revoked`` file (key ids, one per line, ``#`` starts a comment) and an optional
``threshold`` file (one integer, default 1). The board reads the same three things.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleet import atomic
from fleet.errors import ReleaseError, UsageError
from fleet.hashing import Progress, hash_file
from fleet.release import SIGNATURES, Manifest, manifest_from_bytes, read_manifest_bytes
from signing import (
    PublicKey,
    SecretKey,
    SignatureReport,
    SigningError,
    TrustSet,
    check_signatures,
    generate,
    parse_public,
    parse_secret,
    parse_signature,
    require_board,
    require_newer,
    sign,
    signature_valid,
)
from signing.keys import KEY_ID

REVOKED = "revoked"
THRESHOLD = "threshold"
SECRET_SUFFIX = ".sec"  # noqa: S105 (a file name suffix, not a secret)
PUBLIC_SUFFIX = ".pub"
SIGNATURE_SUFFIX = ".sig"
# Far above any real file of its kind; a bound keeps a hostile folder from exhausting memory.
_MAX_SMALL = 64 << 10
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


# ---- keys ------------------------------------------------------------------------------


@dataclass(frozen=True)
class GeneratedKey:
    key_id: str
    secret: Path
    public: Path


def generate_key(out: Path, name: str | None = None) -> GeneratedKey:
    """Write ``NAME.sec`` (mode 0600) and ``NAME.pub`` into ``out``; never overwrite."""
    key = generate()
    name = name if name is not None else key.key_id
    if not _NAME.match(name):
        raise UsageError(f"key name {name!r}: use letters, digits, '.', '_' or '-' (max 64)")
    secret_path = out / f"{name}{SECRET_SUFFIX}"
    public_path = out / f"{name}{PUBLIC_SUFFIX}"
    for path in (secret_path, public_path):
        if path.exists():
            raise UsageError(f"{path} already exists; choose another --name or move it away")
    out.mkdir(parents=True, exist_ok=True)
    _write_new(secret_path, key.to_bytes(f"fleet secret key {name} ({key.key_id})"), 0o600)
    try:
        public = key.public.to_bytes(f"fleet public key {name} ({key.key_id})")
        _write_new(public_path, public, 0o644)
    except BaseException:
        secret_path.unlink()
        raise
    return GeneratedKey(key_id=key.key_id, secret=secret_path, public=public_path)


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` whole or not at all, failing if it exists (link, unlike rename,
    refuses to replace)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError as exc:
            raise UsageError(f"{path} already exists; it was not overwritten") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    atomic.fsync_dir(path.parent)


def _read_small(path: Path, what: str) -> bytes:
    try:
        with path.open("rb") as handle:
            data = handle.read(_MAX_SMALL + 1)
    except FileNotFoundError as exc:
        raise UsageError(f"{what} {path} does not exist") from exc
    except IsADirectoryError as exc:
        raise UsageError(f"{what} {path} is a folder, not a file") from exc
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror}") from exc
    if len(data) > _MAX_SMALL:
        raise UsageError(f"{what} {path} is too large to be one")
    return data


def load_secret_key(path: Path) -> SecretKey:
    data = _read_small(path, "secret key")
    try:
        return parse_secret(data, str(path))
    except SigningError as exc:
        raise UsageError(str(exc)) from exc


def load_public_key(path: Path) -> PublicKey:
    data = _read_small(path, "public key")
    try:
        return parse_public(data, str(path))
    except SigningError as exc:
        raise UsageError(str(exc)) from exc


def load_trust(path: Path) -> TrustSet:
    """A trust folder (keys, revoked, threshold) or a single public key file."""
    if not path.exists():
        raise UsageError(f"trust {path} does not exist (give a folder of *.pub or one .pub)")
    if not path.is_dir():
        return TrustSet.of([load_public_key(path)])
    keys = [load_public_key(p) for p in sorted(path.glob(f"*{PUBLIC_SUFFIX}"))]
    if not keys:
        raise UsageError(f"trust folder {path} holds no *{PUBLIC_SUFFIX} keys")
    revoked = _read_revoked(path / REVOKED) if (path / REVOKED).exists() else []
    threshold = _read_threshold(path / THRESHOLD) if (path / THRESHOLD).exists() else 1
    try:
        return TrustSet.of(keys, revoked, threshold)
    except SigningError as exc:
        raise UsageError(f"trust folder {path}: {exc}") from exc


def _read_revoked(path: Path) -> list[str]:
    text = _read_small(path, "revocation list").decode("ascii", errors="replace")
    ids = []
    for number, line in enumerate(text.splitlines(), start=1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        if not KEY_ID.match(entry):
            raise UsageError(f"{path} line {number}: {entry!r} is not a key id (16 hex digits)")
        ids.append(entry)
    return ids


def _read_threshold(path: Path) -> int:
    text = _read_small(path, "threshold file").decode("ascii", errors="replace").strip()
    if not text.isdigit() or not 1 <= int(text) <= 1000:
        raise UsageError(f"{path}: threshold must be a whole number from 1, not {text!r}")
    return int(text)


# ---- payloads --------------------------------------------------------------------------


@dataclass(frozen=True)
class PayloadCheck:
    name: str
    file: str
    size: int
    sha256: str
    problem: str | None  # None when size and hash match the manifest

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "file": self.file,
            "size": self.size,
            "sha256": self.sha256,
            "ok": self.problem is None,
            "problem": self.problem,
        }


def check_payload(
    folder: Path, name: str, file: str, size: int, sha256: str, progress: Progress | None = None
) -> PayloadCheck:
    label = f"payload {name} ({file})"
    path = folder / file

    def result(problem: str | None) -> PayloadCheck:
        return PayloadCheck(name=name, file=file, size=size, sha256=sha256, problem=problem)

    try:
        info = path.stat()
    except FileNotFoundError:
        return result(f"{label} is missing")
    except OSError as exc:
        return result(f"{label} cannot be read: {exc.strerror}")
    if not stat.S_ISREG(info.st_mode):
        return result(f"{label} is not a regular file")
    if info.st_size != size:
        return result(f"{label} has size {info.st_size} bytes, manifest says {size}")
    try:
        actual_size, actual = hash_file(path, progress)
    except OSError as exc:
        return result(f"{label} cannot be read: {exc.strerror}")
    if actual_size != size:
        return result(f"{label} changed size while being read ({actual_size} bytes)")
    if actual != sha256:
        return result(f"{label} has SHA-256 {actual}, manifest says {sha256}")
    return result(None)


def check_payloads(
    folder: Path, manifest: Manifest, progress: Progress | None = None
) -> list[PayloadCheck]:
    return [
        check_payload(folder, p.name, p.file, p.size, p.sha256, progress) for p in manifest.payloads
    ]


# ---- release folders -------------------------------------------------------------------


def signature_files(folder: Path) -> dict[str, bytes]:
    """Every entry of ``signatures/`` by file name. A huge file is kept truncated so that
    it fails parsing; a link or a folder reads as empty (and so is refused)."""
    found: dict[str, bytes] = {}
    directory = folder / SIGNATURES
    if not directory.is_dir():
        return found
    for path in sorted(directory.iterdir()):
        if path.is_symlink() or not path.is_file():
            found[path.name] = b""
            continue
        try:
            with path.open("rb") as handle:
                found[path.name] = handle.read(_MAX_SMALL)
        except OSError as exc:
            found[path.name] = f"unreadable: {exc.strerror}".encode()
    return found


def read_signatures(folder: Path) -> dict[str, bytes]:
    """The signatures by key id (``KEYID.sig``). Any other entry is kept under its path
    (``signatures/NAME``), which is no key id, so the policy refuses the release as the
    board does."""
    found: dict[str, bytes] = {}
    for name, data in signature_files(folder).items():
        stem = name.removesuffix(SIGNATURE_SUFFIX)
        if name.endswith(SIGNATURE_SUFFIX) and KEY_ID.match(stem):
            found[stem] = data
        else:
            found[f"{SIGNATURES}/{name}"] = data
    return found


@dataclass(frozen=True)
class ReleaseReport:
    """Everything ``fleet verify`` found, failures included; ``problem`` is the first."""

    folder: Path
    signatures: SignatureReport
    manifest: Manifest | None
    manifest_problem: str | None
    policy_problems: tuple[str, ...] = ()
    payloads: tuple[PayloadCheck, ...] = field(default=())

    @property
    def problems(self) -> list[str]:
        found: list[str] = []
        signature_problem = self.signatures.problem()
        if signature_problem:
            found.append(signature_problem)
        if self.manifest_problem:
            found.append(self.manifest_problem)
        found.extend(self.policy_problems)
        found.extend(p.problem for p in self.payloads if p.problem)
        return found

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        manifest = self.manifest
        return {
            "release_folder": str(self.folder),
            "ok": self.ok,
            "problems": self.problems,
            "signatures": self.signatures.as_dict(),
            "manifest": None
            if manifest is None
            else {
                "app": manifest.app,
                "version": manifest.version,
                "release": manifest.release,
                "board": manifest.board,
            },
            "payloads": [p.as_dict() for p in self.payloads],
        }


def inspect_release(
    folder: Path,
    trust: TrustSet,
    floor: int | None = None,
    board: str | None = None,
    progress: Progress | None = None,
) -> ReleaseReport:
    """Check everything and report it all; raises only when there is no manifest to read."""
    data = read_manifest_bytes(folder)
    signatures = check_signatures(data, read_signatures(folder), trust)
    try:
        manifest = manifest_from_bytes(data)
    except ReleaseError as exc:
        return ReleaseReport(folder, signatures, None, str(exc))
    policy: list[str] = []
    try:
        require_board(manifest.board, board)
    except SigningError as exc:
        policy.append(str(exc))
    try:
        require_newer(manifest.release, floor)
    except SigningError as exc:
        policy.append(str(exc))
    payloads = tuple(check_payloads(folder, manifest, progress))
    return ReleaseReport(folder, signatures, manifest, None, tuple(policy), payloads)


def verify_release(
    folder: Path,
    trust: TrustSet,
    floor: int | None = None,
    board: str | None = None,
    progress: Progress | None = None,
) -> ReleaseReport:
    """``inspect_release`` that raises ReleaseError with the first problem."""
    report = inspect_release(folder, trust, floor, board, progress)
    problems = report.problems
    if problems:
        raise ReleaseError(f"{folder}: {problems[0]}")
    return report


@dataclass(frozen=True)
class SignResult:
    key_id: str
    added: bool  # False when the folder already held this key's valid signature
    path: Path


def sign_release_detail(folder: Path, key_path: Path, *, check: bool = True) -> SignResult:
    """Sign ``folder``'s manifest with the key at ``key_path``.

    With ``check`` the payloads are hashed first: a signer vouches for the payloads
    through their hashes and must not sign a folder whose payloads do not match.
    """
    data = read_manifest_bytes(folder)
    manifest = manifest_from_bytes(data)
    key = load_secret_key(key_path)
    if check:
        for payload in check_payloads(folder, manifest):
            if payload.problem:
                raise ReleaseError(f"{folder}: refusing to sign: {payload.problem}")
    path = folder / SIGNATURES / f"{key.key_id}{SIGNATURE_SUFFIX}"
    if path.exists():
        with contextlib.suppress(OSError, SigningError):
            existing = parse_signature(path.read_bytes())
            if signature_valid(key.public, existing, data):
                return SignResult(key.key_id, False, path)
    signature = sign(key, data)
    # Like signify, name the public key to verify with in the (untrusted) comment.
    stem = key_path.name.removesuffix(SECRET_SUFFIX)
    comment = f"verify with {stem if _NAME.match(stem) else key.key_id}{PUBLIC_SUFFIX}"
    atomic.write_bytes(path, signature.to_bytes(comment))
    return SignResult(key.key_id, True, path)


def sign_release(folder: Path, key_path: Path) -> str:
    """Add ``key_path``'s signature to the release (idempotent); return the key id."""
    return sign_release_detail(folder, key_path).key_id
