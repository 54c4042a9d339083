"""fleet.hashing: the one file hasher gives hashlib's answer for empty, small and
multi-block files, reports progress that adds up, and feeds extra hashers the same bytes."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from fleet.hashing import CHUNK, hash_file, sha256_file

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, 2 * CHUNK + 17])
def test_hash_file_matches_hashlib(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    path = tmp_path / "f"
    path.write_bytes(data)
    seen: list[int] = []
    sha1 = hashlib.sha1(usedforsecurity=False)
    assert hash_file(path, seen.append, also=[sha1]) == (size, hashlib.sha256(data).hexdigest())
    assert sum(seen) == size
    assert sha1.hexdigest() == hashlib.sha1(data, usedforsecurity=False).hexdigest()
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_missing_file_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        hash_file(tmp_path / "none")
