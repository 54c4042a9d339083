"""The files a Raspberry Pi in USB boot mode may ask for, looked up the way usbboot's
``check_file`` (main.c lines 668-770, raspberrypi/usbboot at 87d6e03) looks them up.

The packaged rpiboot installs ``msd/`` beside ``mass-storage-gadget64/`` (usbboot's
Makefile, ``install``); usbboot also compiles ``msd/`` into its binary. The gadget's
``bootfiles.bin`` only holds 2711/ and 2712/ first stages, so a Zero 2 W, Pi 3 or CM3
(0x2763/0x2764) boots from ``msd/`` and gets that folder's mass-storage firmware.
"""

from __future__ import annotations

import string
import tarfile
from pathlib import Path

from fleet.errors import FlashError

# bootfiles.bin (the mass-storage-gadget bundle) keeps each chip's files in a folder.
CHIP_FOLDER = {0x2763: "2710", 0x2764: "2710", 0x2711: "2711", 0x2712: "2712"}
# The names check_file serves from its built-in msd/ copy (main.c 749-767) and the msd/
# file each maps to: msd/ has one start.elf for both chips since usbboot ed94c45. Its
# "else" branch covers every chip but 2711, 2712 included, and so does this.
MSD_FALLBACK = {
    "2711": {"bootcode4.bin": "bootcode4.bin", "start4.elf": "start.elf"},
    "other": {"bootcode.bin": "bootcode.bin", "start.elf": "start.elf"},
}
# strcasecmp folds ASCII letters only
_ASCII_FOLD = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


class BootFiles:
    """The files a board may ask for: a folder, optionally with bootfiles.bin in it,
    and the ``msd`` folder (by default ``msd/`` beside ``folder``) as the last resort.

    For a file ``name`` on chip folder ``chip`` the order is check_file's:
    ``<folder>/<chip>/<name>`` (the override of a bundle member, main.c 688-699), the
    bundle's ``<chip>/<name>`` matched case-insensitively (701-709; bootfiles_read
    compares with strcasecmp, bootfiles.c 70), ``<folder>/<name>`` (735-740), then the
    msd/ fallback (749-767). Files on disk match case-sensitively, as fopen does."""

    def __init__(self, folder: Path, msd: Path | None = None) -> None:
        if not folder.is_dir():
            raise FlashError(f"rpiboot files folder {folder} does not exist")
        self.folder = folder
        self.msd = msd if msd is not None else folder.parent / "msd"
        self.bundle_path = folder / "bootfiles.bin"
        self.bundle: dict[str, bytes] = {}  # by ASCII-folded name
        if self.bundle_path.is_file():
            try:
                with tarfile.open(self.bundle_path) as tar:
                    for member in tar.getmembers():
                        handle = tar.extractfile(member) if member.isfile() else None
                        if handle is not None:
                            key = _fold(member.name.removeprefix("./"))
                            # bootfiles_read takes the first member that matches
                            self.bundle.setdefault(key, handle.read())
            except (tarfile.TarError, OSError) as err:
                raise FlashError(f"{self.bundle_path} is not a readable tar: {err}") from None

    @staticmethod
    def allowed(name: str) -> bool:
        return bool(name) and ".." not in name and not name.startswith(("/", "\\"))

    def read(self, name: str, product: int) -> bytes | None:
        """The file's bytes, or None when it is missing or not allowed."""
        found = self.locate(name, product)
        return found[0] if found is not None else None

    def locate(self, name: str, product: int) -> tuple[bytes, str] | None:
        """The file's bytes and where they came from, for the log."""
        if not self.allowed(name):
            return None
        chip = CHIP_FOLDER[product]
        found = _file(self.folder, f"{chip}/{name}")
        if found is not None:
            return found
        member = self.bundle.get(_fold(f"{chip}/{name}"))
        if member is not None:
            return member, f"{chip}/{name} in {self.bundle_path}"
        found = _file(self.folder, name)
        if found is not None:
            return found
        fallback = MSD_FALLBACK["2711" if chip == "2711" else "other"].get(name)
        return _file(self.msd, fallback) if fallback is not None else None

    def missing(self, name: str, product: int) -> str:
        """A one-line account of a file that is nowhere to be found."""
        chip = CHIP_FOLDER[product]
        places = [f"{self.folder}/{chip}"]
        if self.bundle:
            places.append(str(self.bundle_path))
        places.append(str(self.folder))
        if name in MSD_FALLBACK["2711" if chip == "2711" else "other"]:
            places.append(str(self.msd))
        return f"{name} is missing: looked in {', '.join(places)}"


def _fold(name: str) -> str:
    return name.translate(_ASCII_FOLD)


def _file(root: Path, relative: str) -> tuple[bytes, str] | None:
    path = root / relative
    if path.is_file() and path.resolve().is_relative_to(root.resolve()):
        return path.read_bytes(), str(path)
    return None
