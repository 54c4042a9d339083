"""A board's tree: the files a netbooting board may fetch, held in memory.

The bytes are read once, then checked: the manifest's signatures against the trust set,
each payload's size and SHA-256 against the manifest, all on the bytes in memory. What
is served afterwards is those bytes, so a file changed on disk after loading is never
served. The boot payload (a FAT image) is unpacked into the tree's root, as a card's
first partition would be; the release itself (manifest, signatures, payloads) is under
``release/`` for the initramfs, which checks them again with the board's pinned keys.
"""

from __future__ import annotations

import hashlib
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from fleet.errors import ReleaseError
from fleet.release import MANIFEST, SIGNATURES, Manifest, manifest_from_bytes, read_manifest_bytes
from fleet.trust import read_signatures
from signing.policy import TrustSet, check_signatures

RELEASE_DIR = "release"
MTOOLS_ENV = {"MTOOLS_SKIP_CHECK": "1", "MTOOLS_NO_VFAT": "0", "PATH": "/usr/bin:/bin"}


@dataclass(frozen=True)
class Tree:
    files: dict[str, bytes]  # tree-relative path -> bytes
    folded: dict[str, str]  # casefolded path -> path: FAT names are case-insensitive
    label: str  # for the log: app version (release N)

    def get(self, path: str) -> bytes | None:
        data = self.files.get(path)
        if data is None:
            real = self.folded.get(path.casefold())
            data = self.files.get(real) if real is not None else None
        return data

    @property
    def size(self) -> int:
        return sum(len(b) for b in self.files.values())


def make_tree(files: dict[str, bytes], label: str) -> Tree:
    return Tree(files, {p.casefold(): p for p in files}, label)


def _read_exact(path: Path, size: int) -> bytes:
    try:
        with path.open("rb") as handle:
            data = handle.read(size + 1)
    except OSError as exc:
        raise ReleaseError(f"cannot read {path}: {exc.strerror}") from None
    if len(data) != size:
        raise ReleaseError(f"{path}: {len(data)} bytes where the manifest says {size}")
    return data


def load_release(folder: Path, trust: TrustSet) -> Tree:
    """The tree of the release in ``folder``, every byte checked; ReleaseError if not."""
    manifest_bytes = read_manifest_bytes(folder)
    signatures = read_signatures(folder)
    problem = check_signatures(manifest_bytes, signatures, trust).problem()
    if problem:
        raise ReleaseError(f"{folder}: {problem}")
    manifest = manifest_from_bytes(manifest_bytes)
    files: dict[str, bytes] = {f"{RELEASE_DIR}/{MANIFEST}": manifest_bytes}
    for key_id, data in signatures.items():
        files[f"{RELEASE_DIR}/{SIGNATURES}/{key_id}.sig"] = data
    payloads: dict[str, bytes] = {}
    for p in manifest.payloads:
        data = _read_exact(folder / p.file, p.size)
        if hashlib.sha256(data).hexdigest() != p.sha256:
            raise ReleaseError(f"{folder}: payload {p.file} does not match the manifest's hash")
        payloads[p.name] = data
        files[f"{RELEASE_DIR}/{p.file}"] = data
    if "boot" not in payloads:
        raise ReleaseError(f"{folder}: no boot payload to netboot from")
    files.update(_unpack_fat(payloads["boot"]))
    return make_tree(files, _label(manifest))


def _label(manifest: Manifest) -> str:
    return f"{manifest.app} {manifest.version} (release {manifest.release})"


def _unpack_fat(image: bytes) -> dict[str, bytes]:
    """Every file of a FAT image (the verified bytes, written to a private file for
    mtools), by its path inside the image."""
    with tempfile.TemporaryDirectory(prefix="fleet-netboot-") as tmp:
        source = Path(tmp) / "boot.vfat"
        source.write_bytes(image)
        out = Path(tmp) / "files"
        out.mkdir()
        proc = subprocess.run(
            ["mcopy", "-s", "-n", "-i", str(source), "::/", str(out)],
            env=MTOOLS_ENV,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            first = (proc.stderr.strip().splitlines() or ["mcopy failed"])[0]
            raise ReleaseError(f"the boot payload is not a readable FAT image: {first}")
        found: dict[str, bytes] = {}
        for path in sorted(out.rglob("*")):
            if path.is_file() and not path.is_symlink():
                found[path.relative_to(out).as_posix()] = path.read_bytes()
        return found
