"""The lab's own SSH client key: made once per lab root, authorised on every board the lab
provisions, and used by ``fleet lab ssh`` and the Python API."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleet import atomic


def ensure_client_key(key_path: Path, comment: str = "fleet-lab") -> str:
    """Create the ed25519 key pair at ``key_path`` (+ ``.pub``) if missing; return the
    public key line in authorized_keys format."""
    pub_path = key_path.with_name(key_path.name + ".pub")
    if key_path.exists() and pub_path.exists():
        return pub_path.read_text().strip()
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = private.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    line = f"{public.decode()} {comment}"
    # The private half first: a .pub without its private key would be taken as complete.
    atomic.write_bytes(key_path, pem, mode=0o600)
    atomic.write_text(pub_path, line + "\n", mode=0o644)
    return line
