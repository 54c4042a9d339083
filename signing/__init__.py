"""The trust core of fleet: keys, signatures, the manifest's canonical byte form and
the verification policy. It imports nothing from ``fleet`` and does no I/O of its own:
bytes in, results out, so it can be read and audited alone."""

from signing.canonical import CanonicalError, canonical_bytes, parse_canonical
from signing.errors import (
    BoardMismatchError,
    KeyFormatError,
    PolicyError,
    RollbackError,
    SignatureError,
    SignatureFormatError,
    SigningError,
)
from signing.keys import PublicKey, SecretKey, generate, parse_public, parse_secret
from signing.policy import (
    Facts,
    SignatureReport,
    TrustSet,
    check_signatures,
    read_facts,
    require_board,
    require_newer,
    require_signatures,
    verify_release,
)
from signing.signature import Signature, parse_signature, sign, signature_valid

__all__ = [
    "BoardMismatchError",
    "CanonicalError",
    "Facts",
    "KeyFormatError",
    "PolicyError",
    "PublicKey",
    "RollbackError",
    "SecretKey",
    "Signature",
    "SignatureError",
    "SignatureFormatError",
    "SignatureReport",
    "SigningError",
    "TrustSet",
    "canonical_bytes",
    "check_signatures",
    "generate",
    "parse_canonical",
    "parse_public",
    "parse_secret",
    "parse_signature",
    "read_facts",
    "require_board",
    "require_newer",
    "require_signatures",
    "sign",
    "signature_valid",
    "verify_release",
]
