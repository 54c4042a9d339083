"""The release a run tests: its folder, manifest and (from `fleet build`'s output) disk."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fleet.release import Manifest, load_manifest, manifest_sha256
from fleet.trust import load_trust, verify_release
from signing import TrustSet


@dataclass(frozen=True)
class Release:
    folder: Path
    manifest: Manifest
    sha256: str  # the manifest's: what a board reports for the slot holding it

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def disk(self) -> Path:
        """`fleet build --out OUT` writes OUT/release and OUT/disk.img."""
        return self.folder.parent / "disk.img"


def load(folder: Path, trust: TrustSet | None) -> Release:
    """The release in ``folder``, verified against ``trust`` when given (a run never puts
    an unverified release on a board)."""
    if trust is not None:
        verify_release(folder, trust)
    return Release(folder, load_manifest(folder), manifest_sha256(folder))


def load_policy(path: Path | None) -> TrustSet | None:
    return load_trust(path) if path is not None else None
