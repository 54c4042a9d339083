"""A project's extra Debian package goes into the image whole, and its shared libraries
count as what needs libraries, not only its programs (libsqlite3-0 needs libm, which no
program of a hello image pulls in: the build failed in bench/delta.py's dependency case)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet.image.rootfs import Staged, _add_whole_package

pytestmark = pytest.mark.unit


def test_a_packages_programs_and_shared_libraries_are_returned(tmp_path: Path) -> None:
    root = tmp_path / "pkg"
    lib = root / "usr/lib/aarch64-linux-gnu"
    lib.mkdir(parents=True)
    (lib / "libsqlite3.so.0.8.6").write_bytes(b"\x7fELF" + bytes(60))
    (lib / "libsqlite3.so.0").symlink_to("libsqlite3.so.0.8.6")
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/tool").write_bytes(b"\x7fELF" + bytes(60))
    (root / "usr/bin/tool").chmod(0o755)
    (root / "usr/share/sqlite").mkdir(parents=True)
    (root / "usr/share/sqlite/notes.so.txt").write_text("not a library\n")
    (root / "usr/share/doc/x").mkdir(parents=True)
    (root / "usr/share/doc/x/copyright").write_text("left out\n")
    staged = Staged(tmp_path / "staging")
    found = _add_whole_package(staged, "libsqlite3-0", root)
    assert sorted(found) == ["usr/bin/tool", "usr/lib/aarch64-linux-gnu/libsqlite3.so.0.8.6"]
    assert (tmp_path / "staging/usr/share/sqlite/notes.so.txt").exists()
    assert not (tmp_path / "staging/usr/share/doc/x/copyright").exists()
    assert (tmp_path / "staging/usr/lib/aarch64-linux-gnu/libsqlite3.so.0").is_symlink()
