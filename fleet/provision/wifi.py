"""A board's WiFi settings, taken as Raspberry Pi Imager takes them (network name,
passphrase, country) and stored on partition 1 as ``fleet/wifi``, outside the signed
payloads. The passphrase never reaches the card: what is stored is the 256-bit key that
wpa_passphrase derives from it (IEEE 802.11i: PBKDF2-HMAC-SHA1 of the passphrase, salted
with the SSID, 4096 rounds), which is all a WPA2 client needs."""

from __future__ import annotations

import hashlib
import string
from dataclasses import dataclass
from pathlib import Path

from fleet.errors import UsageError

# ISO 3166-1 alpha-2 codes are two capital letters; the regulatory database decides
# which it knows, on the board.
_COUNTRY_LETTERS = set(string.ascii_uppercase)
_PRINTABLE = {chr(c) for c in range(32, 127)}
_HEX = set("0123456789abcdefABCDEF")


@dataclass(frozen=True)
class Wifi:
    ssid: bytes
    psk: bytes  # 32 bytes
    country: str | None = None

    def render(self) -> str:
        """The ``fleet/wifi`` file: key=value lines the board checks before use."""
        lines = [f"ssid={self.ssid.hex()}", f"psk={self.psk.hex()}"]
        if self.country:
            lines.append(f"country={self.country}")
        return "\n".join(lines) + "\n"

    def describe(self) -> str:
        name = self.ssid.decode("utf-8", errors="replace")
        return f"WiFi {name!r}" + (f" ({self.country})" if self.country else "")


def derive_psk(passphrase: str, ssid: bytes) -> bytes:
    """The key wpa_passphrase prints as psk=: 8 to 63 printable ASCII characters."""
    if not 8 <= len(passphrase) <= 63 or not set(passphrase) <= _PRINTABLE:
        raise UsageError("a WPA2 passphrase is 8 to 63 printable ASCII characters")
    return hashlib.pbkdf2_hmac("sha1", passphrase.encode("ascii"), ssid, 4096, 32)


def parse(ssid: str, psk_file: Path | None, country: str | None, where: str = "--wifi") -> Wifi:
    """Check the values and derive the key. ``psk_file`` holds the passphrase on its first
    line (or a key already derived: 64 hex digits), so it stays out of shell history."""
    name = ssid.encode("utf-8")
    if not 1 <= len(name) <= 32:
        raise UsageError(f"{where}-ssid: a network name is 1 to 32 bytes, got {len(name)}")
    if psk_file is None:
        raise UsageError(f"{where}-psk-file: needed with {where}-ssid (a file with the passphrase)")
    try:
        text = psk_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{where}-psk-file: cannot read {psk_file}: {exc}") from exc
    lines = text.splitlines()
    secret = lines[0] if lines else ""
    if len(secret) == 64 and set(secret) <= _HEX:
        psk = bytes.fromhex(secret)
    else:
        try:
            psk = derive_psk(secret, name)
        except UsageError as exc:
            raise UsageError(f"{where}-psk-file: {psk_file}: {exc}") from exc
    if country is not None and (len(country) != 2 or not set(country) <= _COUNTRY_LETTERS):
        raise UsageError(f"{where}-country: two capital letters (ISO 3166), got {country!r}")
    return Wifi(name, psk, country)
