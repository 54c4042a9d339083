"""Signatures in signify's format: b"Ed" + the signer's 8-byte key number + the 64-byte
Ed25519 signature over the exact message bytes. ``signify-openbsd -V`` reads them."""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature

from signing.armor import armor, unarmor
from signing.errors import SignatureFormatError
from signing.keys import ALGORITHM, KEYNUM_LEN, PublicKey, SecretKey, key_id_of

SIGNATURE_LEN = 2 + KEYNUM_LEN + 64


@dataclass(frozen=True)
class Signature:
    keynum: bytes
    raw: bytes  # 64 bytes

    @property
    def key_id(self) -> str:
        return key_id_of(self.keynum)

    def to_bytes(self, comment: str | None = None) -> bytes:
        text = comment if comment is not None else f"verify with {self.key_id}.pub"
        return armor(text, ALGORITHM + self.keynum + self.raw)


def sign(key: SecretKey, message: bytes) -> Signature:
    return Signature(keynum=key.keynum, raw=key.signer().sign(message))


def parse_signature(data: bytes, what: str = "signature") -> Signature:
    _, blob = unarmor(data, SIGNATURE_LEN, what, SignatureFormatError)
    if blob[:2] != ALGORITHM:
        raise SignatureFormatError(f"{what} is not an Ed25519 signature")
    return Signature(keynum=blob[2 : 2 + KEYNUM_LEN], raw=blob[2 + KEYNUM_LEN :])


def signature_valid(key: PublicKey, signature: Signature, message: bytes) -> bool:
    """True when ``signature`` was made by ``key`` over exactly ``message``."""
    if signature.keynum != key.keynum:
        return False
    try:
        key.verifier().verify(signature.raw, message)
    except InvalidSignature:
        return False
    return True
