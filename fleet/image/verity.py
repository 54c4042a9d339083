"""A dm-verity hash tree for the rootfs payload, computed here so that builds need no
veritysetup and stay bit-for-bit reproducible.

The payload is the squashfs padded to whole 4096-byte blocks, followed at once by the
hash tree, with no verity superblock (the parameters travel in the signed manifest and
in the slot's initramfs instead). The tree is the kernel's format version 1
(Documentation/admin-guide/device-mapper/verity.rst): each block's digest is
SHA-256(salt || block); a hash block holds 4096 / 32 = 128 digests, zero padded; each
level hashes the level below it until one block remains, and the levels are stored
top (the one block under the root) first. The root hash is the digest of that top
block. The salt is derived from the data itself, so the same squashfs always gives the
same payload, and two different squashfs images never share a salt.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from fleet.release import VERITY_ALGORITHM, VERITY_BLOCK, Verity, verity_tree_size

__all__ = ["Verity", "append_hash_tree", "default_salt", "hash_tree", "release_salt"]

BLOCK = VERITY_BLOCK
ALGORITHM = VERITY_ALGORITHM
_SALT_DOMAIN = b"fleet dm-verity salt v1\0"
_CHUNK = 256 * BLOCK


def _digest(salt: bytes, block: bytes) -> bytes:
    return hashlib.sha256(salt + block).digest()


def _pack(digests: list[bytes]) -> bytes:
    """Digests into whole hash blocks, the last one zero padded."""
    data = b"".join(digests)
    return data + bytes(-len(data) % BLOCK)


def hash_tree(data_digests: list[bytes], salt: bytes) -> tuple[bytes, bytes]:
    """(tree bytes as stored, top level first; root digest) over the data blocks'
    digests. One data block needs no tree: its digest is the root."""
    levels: list[bytes] = []
    digests = data_digests
    while len(digests) > 1:
        level = _pack(digests)
        levels.append(level)
        digests = [_digest(salt, level[i : i + BLOCK]) for i in range(0, len(level), BLOCK)]
    return b"".join(reversed(levels)), digests[0]


def default_salt(path: Path) -> bytes:
    """A salt that depends only on the (padded) data: reproducible, never shared by two
    different images."""
    digest = hashlib.sha256(_SALT_DOMAIN)
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    digest.update(bytes(-size % BLOCK))
    return digest.digest()


def release_salt(app: str, board: str) -> bytes:
    """The salt of every release of one app for one board. A salt that changed with the
    data (default_salt) changed every hash block of the tree, so a one-line change cost a
    delta of the whole tree (1/128 of the payload); with this one only the hash blocks
    above changed data blocks differ. The salt only has to keep precomputed tables of other
    images useless, and no other app or board shares it."""
    return hashlib.sha256(_SALT_DOMAIN + app.encode() + b"\0" + board.encode()).digest()


def append_hash_tree(path: Path, salt: bytes | None = None) -> Verity:
    """Pad ``path`` to whole blocks and append its hash tree; return the parameters."""
    if salt is None:
        salt = default_salt(path)
    if not 0 < len(salt) <= 256:
        raise ValueError("a dm-verity salt is 1 to 256 bytes")
    size = path.stat().st_size
    if size == 0:
        raise ValueError(f"{path} is empty: nothing to protect")
    with path.open("r+b") as handle:
        handle.seek(size)
        handle.write(bytes(-size % BLOCK))
        handle.seek(0)
        digests: list[bytes] = []
        while chunk := handle.read(_CHUNK):
            digests += [_digest(salt, chunk[i : i + BLOCK]) for i in range(0, len(chunk), BLOCK)]
        tree, root = hash_tree(digests, salt)
        data_blocks = len(digests)
        assert len(tree) == verity_tree_size(data_blocks)
        handle.seek(data_blocks * BLOCK)
        handle.write(tree)
    return Verity(
        root_hash=root.hex(),
        salt=salt.hex(),
        data_blocks=data_blocks,
        hash_offset=data_blocks * BLOCK,
        block_size=BLOCK,
        algorithm=ALGORITHM,
    )
