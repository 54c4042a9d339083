"""Ed25519 release keys in signify's formats, so a board can verify with the stock
``signify-openbsd`` and a key made by fleet can sign with ``signify-openbsd -S``.

A key's number (8 random bytes, written into every signature it makes) is its key id,
printed as 16 lowercase hex digits. Secret keys are stored unencrypted (signify's
``-n``): protecting the file is the job of its mode (0600) and of where it is kept.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from signing.armor import armor, unarmor
from signing.errors import KeyFormatError

ALGORITHM = b"Ed"
KDF_ALGORITHM = b"BK"
KEYNUM_LEN = 8
PUBLIC_LEN = 2 + KEYNUM_LEN + 32
# pkalg, kdfalg, kdfrounds (u32), salt, checksum, keynum, seed + public key
SECRET_LEN = 2 + 2 + 4 + 16 + 8 + KEYNUM_LEN + 64
KEY_ID = re.compile(r"^[0-9a-f]{16}$")


def key_id_of(keynum: bytes) -> str:
    return keynum.hex()


@dataclass(frozen=True)
class PublicKey:
    keynum: bytes
    raw: bytes  # the 32-byte Ed25519 public key

    @property
    def key_id(self) -> str:
        return key_id_of(self.keynum)

    def to_bytes(self, comment: str | None = None) -> bytes:
        text = comment if comment is not None else f"fleet public key {self.key_id}"
        return armor(text, ALGORITHM + self.keynum + self.raw)

    def verifier(self) -> Ed25519PublicKey:
        return Ed25519PublicKey.from_public_bytes(self.raw)


@dataclass(frozen=True)
class SecretKey:
    keynum: bytes
    seed: bytes  # the 32-byte Ed25519 private key seed
    public: PublicKey

    @property
    def key_id(self) -> str:
        return key_id_of(self.keynum)

    def to_bytes(self, comment: str | None = None) -> bytes:
        text = comment if comment is not None else f"fleet secret key {self.key_id}"
        secret = self.seed + self.public.raw
        checksum = hashlib.sha512(secret).digest()[:8]
        salt = os.urandom(16)  # unused with zero KDF rounds; signify writes random bytes too
        blob = (
            ALGORITHM
            + KDF_ALGORITHM
            + struct.pack(">I", 0)
            + salt
            + checksum
            + self.keynum
            + secret
        )
        return armor(text, blob)

    def signer(self) -> Ed25519PrivateKey:
        return Ed25519PrivateKey.from_private_bytes(self.seed)


def generate() -> SecretKey:
    private = Ed25519PrivateKey.generate()
    return _secret_from_seed(private.private_bytes_raw(), os.urandom(KEYNUM_LEN))


def _secret_from_seed(seed: bytes, keynum: bytes) -> SecretKey:
    private = Ed25519PrivateKey.from_private_bytes(seed)
    raw = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return SecretKey(keynum=keynum, seed=seed, public=PublicKey(keynum=keynum, raw=raw))


def parse_public(data: bytes, what: str = "public key") -> PublicKey:
    _, blob = unarmor(data, PUBLIC_LEN, what, KeyFormatError)
    if blob[:2] != ALGORITHM:
        raise KeyFormatError(f"{what} is not an Ed25519 key")
    key = PublicKey(keynum=blob[2 : 2 + KEYNUM_LEN], raw=blob[2 + KEYNUM_LEN :])
    try:
        key.verifier()
    except ValueError as exc:
        raise KeyFormatError(f"{what} is not a valid Ed25519 public key") from exc
    return key


def parse_secret(data: bytes, what: str = "secret key") -> SecretKey:
    _, blob = unarmor(data, SECRET_LEN, what, KeyFormatError)
    if blob[:2] != ALGORITHM or blob[2:4] != KDF_ALGORITHM:
        raise KeyFormatError(f"{what} is not an Ed25519 signify secret key")
    (rounds,) = struct.unpack(">I", blob[4:8])
    if rounds != 0:
        raise KeyFormatError(
            f"{what} is protected by a passphrase; fleet reads only unencrypted keys "
            "(signify-openbsd -G -n)"
        )
    checksum = blob[24:32]
    keynum = blob[32:40]
    secret = blob[40:]
    if not hmac.compare_digest(hashlib.sha512(secret).digest()[:8], checksum):
        raise KeyFormatError(f"{what} fails its checksum (damaged file)")
    key = _secret_from_seed(secret[:32], keynum)
    if key.public.raw != secret[32:]:
        raise KeyFormatError(f"{what} holds a public half that does not match its seed")
    return key
