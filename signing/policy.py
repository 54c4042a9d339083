"""The trust policy: which keys a board trusts, which are revoked, how many must sign,
the anti-rollback floor and the board-profile match.

``check_signatures`` never raises on bad input: it sorts every signature into valid,
unknown, revoked or bad, so a caller can show the whole picture. ``require_*`` and
``verify_release`` are the raising wrappers; their messages say exactly what failed.

A signature by a trusted key that does not verify is fatal even when other keys meet
the threshold: it means the manifest or that signature was altered, and a release
folder that was tampered with is refused rather than half-believed. Signatures by
unknown or revoked keys are ignored (they count for nothing), which is what lets a
release carry an old and a new key's signatures through a key rotation.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from signing.canonical import CanonicalError, parse_canonical
from signing.errors import (
    BoardMismatchError,
    KeyFormatError,
    RollbackError,
    SignatureError,
    SignatureFormatError,
)
from signing.keys import KEY_ID, PublicKey
from signing.signature import parse_signature, signature_valid


@dataclass(frozen=True)
class TrustSet:
    """Public keys a verifier trusts, key ids it refuses, and how many must sign."""

    keys: Mapping[str, PublicKey]
    revoked: frozenset[str] = frozenset()
    threshold: int = 1

    def __post_init__(self) -> None:
        if self.threshold < 1:
            raise KeyFormatError(f"threshold must be at least 1, not {self.threshold}")
        for key_id, key in self.keys.items():
            if key.key_id != key_id:
                raise KeyFormatError(f"key {key.key_id} is filed under id {key_id}")
        for key_id in self.revoked:
            if not KEY_ID.match(key_id):
                raise KeyFormatError(f"revoked key id {key_id!r} is not 16 lowercase hex digits")

    @classmethod
    def of(
        cls, keys: Iterable[PublicKey], revoked: Iterable[str] = (), threshold: int = 1
    ) -> TrustSet:
        table: dict[str, PublicKey] = {}
        for key in keys:
            if table.get(key.key_id, key) != key:
                raise KeyFormatError(f"two different public keys share key id {key.key_id}")
            table[key.key_id] = key
        return cls(keys=table, revoked=frozenset(revoked), threshold=threshold)

    def with_keys(self, keys: Iterable[PublicKey]) -> TrustSet:
        """This set plus ``keys`` (how a board takes on a rotated-in key)."""
        return TrustSet.of([*self.keys.values(), *keys], self.revoked, self.threshold)

    def with_revoked(self, key_ids: Iterable[str]) -> TrustSet:
        return TrustSet(self.keys, self.revoked | frozenset(key_ids), self.threshold)


@dataclass(frozen=True)
class SignatureReport:
    """Every signature sorted by what it is worth under one TrustSet."""

    threshold: int
    valid: tuple[str, ...] = ()  # trusted, not revoked, verifies
    unknown: tuple[str, ...] = ()  # key not in the trusted set (not counted)
    revoked: tuple[str, ...] = ()  # key revoked (not counted, whether or not it verifies)
    bad: tuple[tuple[str, str], ...] = field(default=())  # (name, reason): fatal

    @property
    def ok(self) -> bool:
        return not self.bad and len(self.valid) >= self.threshold

    def problem(self) -> str | None:
        """One line saying why the signatures are refused, or None when they are accepted."""
        if self.bad:
            name, reason = self.bad[0]
            return f"signature {name}: {reason}"
        if len(self.valid) >= self.threshold:
            return None
        if not (self.valid or self.unknown or self.revoked):
            return "release is not signed (no signatures)"
        parts = [f"{len(self.valid)} valid signature(s) from trusted keys, need {self.threshold}"]
        if self.revoked:
            parts.append(f"signed by revoked key {', '.join(self.revoked)}")
        if self.unknown:
            parts.append(f"signed by unknown key {', '.join(self.unknown)}")
        return "; ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "threshold": self.threshold,
            "valid": list(self.valid),
            "unknown": list(self.unknown),
            "revoked": list(self.revoked),
            "bad": [{"name": n, "reason": r} for n, r in self.bad],
        }


def check_signatures(
    message: bytes, signatures: Mapping[str, bytes], trust: TrustSet
) -> SignatureReport:
    """Sort ``signatures`` (key id as named by the file -> file bytes) against ``trust``."""
    valid: list[str] = []
    unknown: list[str] = []
    revoked: list[str] = []
    bad: list[tuple[str, str]] = []
    for name in sorted(signatures):
        if not KEY_ID.match(name):
            # The board takes only KEYID.sig files; anything else beside them refuses the
            # release on both sides, so host and board never judge different sets.
            bad.append((name, "is not a signature file (signatures/ holds only KEYID.sig)"))
            continue
        try:
            signature = parse_signature(signatures[name], f"{name}")
        except SignatureFormatError as exc:
            bad.append((name, f"malformed: {exc}"))
            continue
        if name != signature.key_id:
            # The board finds a key's signature by its file name; a mismatch would let the
            # host and the board read different signatures.
            bad.append((name, f"holds a signature by key {signature.key_id}, not {name}"))
            continue
        key_id = signature.key_id
        if key_id in trust.revoked:
            revoked.append(key_id)
        elif key_id not in trust.keys:
            unknown.append(key_id)
        elif signature_valid(trust.keys[key_id], signature, message):
            valid.append(key_id)
        else:
            bad.append(
                (key_id, f"by trusted key {key_id} does not verify (manifest or signature altered)")
            )
    return SignatureReport(
        threshold=trust.threshold,
        valid=tuple(valid),
        unknown=tuple(unknown),
        revoked=tuple(revoked),
        bad=tuple(bad),
    )


def require_signatures(report: SignatureReport) -> None:
    problem = report.problem()
    if problem is not None:
        raise SignatureError(problem)


def require_newer(release: int, floor: int | None) -> None:
    """The anti-rollback rule: a release must be above the board's floor, always. No
    signed document can lower a floor: going back to an older app is a new release (a
    higher number) of that app, so a once-signed old release can never be replayed."""
    if floor is None:
        return
    if release <= floor:
        raise RollbackError(
            f"release {release} is not above the board's floor {floor}; to go back to an "
            "older app, build it again with a higher release number"
        )


def require_board(release_board: str, board: str | None) -> None:
    if board is not None and release_board != board:
        raise BoardMismatchError(f"release is for board {release_board!r}, not {board!r}")


@dataclass(frozen=True)
class Facts:
    """The fields of a manifest the trust policy needs, read from its canonical bytes."""

    release: int
    board: str


def read_facts(message: bytes) -> Facts:
    document = parse_canonical(message)
    release = document.get("release")
    board = document.get("board")
    if not isinstance(release, int) or isinstance(release, bool) or release < 1:
        raise CanonicalError("manifest field release is not a positive integer")
    if "downgrade" in document:
        # fleet once let a signed flag skip the floor: such a document is refused, so
        # no release signed under that rule can be replayed below a board's floor.
        raise CanonicalError("manifest field downgrade is no longer allowed")
    if not isinstance(board, str):
        raise CanonicalError("manifest field board is not a string")
    return Facts(release=release, board=board)


def verify_release(
    message: bytes,
    signatures: Mapping[str, bytes],
    trust: TrustSet,
    floor: int | None = None,
    board: str | None = None,
) -> Facts:
    """Authenticate ``message`` first, then read it and apply floor and board.

    Raises only SigningError subclasses; returns the manifest's policy facts.
    """
    require_signatures(check_signatures(message, signatures, trust))
    facts = read_facts(message)
    require_board(facts.board, board)
    require_newer(facts.release, floor)
    return facts
