"""The trust core's exceptions. Each one names exactly what failed, because the host CLI
prints ``str(err)`` as its one-line message and a board's log carries the same words.

    SigningError (ValueError)
      CanonicalError        manifest bytes are not the one canonical form
      KeyFormatError        a public or secret key is not in signify's format
      SignatureFormatError  a signature file is not in signify's format
      PolicyError           well-formed input that the trust policy refuses
        SignatureError        signatures do not meet the trust policy
        RollbackError         release number not above the board's floor
        BoardMismatchError    release made for another board profile
"""

from __future__ import annotations


class SigningError(ValueError):
    """Base of every error the trust core raises; nothing else escapes it."""


class KeyFormatError(SigningError):
    """A public or secret key's bytes are not a signify Ed25519 key."""


class SignatureFormatError(SigningError):
    """A signature's bytes are not a signify Ed25519 signature."""


class PolicyError(SigningError):
    """The input is well formed but the trust policy refuses it."""


class SignatureError(PolicyError):
    """The release's signatures do not meet the trust policy."""


class RollbackError(PolicyError):
    """The release number is not above the board's floor."""


class BoardMismatchError(PolicyError):
    """The release was made for another board profile."""
