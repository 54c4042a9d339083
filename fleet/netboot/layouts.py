"""Which board a request comes from, by the folder Raspberry Pi firmware puts in front
of its file names (Raspberry Pi documentation, "Network booting" and the bootloader's
TFTP_PREFIX):

* Pi 3 boot ROM: ``bootcode.bin`` and ``bootsig.bin`` at the root, then
  ``<serial>/start.elf`` and everything after it from the serial folder;
* Pi 4 and 5 EEPROM bootloader, ``TFTP_PREFIX=0`` (the default): ``<serial>/`` with the
  serial's low 8 hex digits (the ``10000000`` above them in /proc/cpuinfo is not part of it);
  ``TFTP_PREFIX=1``: ``TFTP_PREFIX_STR`` as it is (a folder such as ``lab/pi4-a/``: the map
  names it, boards.py); ``TFTP_PREFIX=2``: the MAC address as ``dc-a6-32-01-36-c2/``; with
  no start file in that folder the bootloader drops the prefix and asks at the root;
* U-Boot's ``tftpboot``: paths with no board folder, told apart by the client's address.
"""

from __future__ import annotations

import re

_SERIAL_DIR = re.compile(r"[0-9a-fA-F]{8}")
_MAC_DIR = re.compile(r"[0-9a-fA-F]{2}(-[0-9a-fA-F]{2}){5}")
_SERIAL = re.compile(r"([0-9a-fA-F]{8})?[0-9a-fA-F]{8}")
_MAC = re.compile(r"[0-9a-fA-F]{2}([:-][0-9a-fA-F]{2}){5}")
# What a Pi 3's boot ROM asks for before it names its serial folder.
ROM_FILES = ("bootcode.bin", "bootsig.bin")


def split_board(path: str) -> tuple[str | None, str | None, str]:
    """(kind, key, rest): kind "serial" or "mac" when the first folder names a board."""
    first, sep, rest = path.partition("/")
    if sep and _SERIAL_DIR.fullmatch(first):
        return "serial", first.lower(), rest
    if sep and _MAC_DIR.fullmatch(first):
        return "mac", first.lower(), rest
    return None, None, path


def serial_folder(serial: str) -> str | None:
    """The folder a board with this serial (as /proc/cpuinfo shows it) asks in."""
    return serial[-8:].lower() if _SERIAL.fullmatch(serial) else None


def mac_folder(mac: str) -> str | None:
    return mac.lower().replace(":", "-") if _MAC.fullmatch(mac) else None
