"""The networks a board reaches besides its wired one: WiFi (the driver's modules, the
chip's firmware from Debian's firmware-brcm80211, wpa_supplicant as the client) and
Ethernet over a USB device port (a USB network gadget). Only the images that need them
carry them: a profile's WiFi when it says ``default`` or the project asks for it, a
profile's USB gadget always."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from fleet.boards import BoardProfile, Wifi
from fleet.errors import BuildError
from fleet.project import Project

# wpa_supplicant rather than iwd: iwd needs a D-Bus daemon on the board; wpa_supplicant
# runs on its own and reports the events the board needs (connected, wrong key) on its
# output. Its package also brings wpa_passphrase's derivation rules, which the host
# applies (fleet.provision.wifi).
CLIENT_PACKAGE = "wpasupplicant"
CLIENT_IN_PACKAGE = "sbin/wpa_supplicant"  # bookworm's place for it
CLIENT = "usr/sbin/wpa_supplicant"


class Stage(Protocol):
    def add_file(self, rel: str, source: Path, origin: str, mode: int | None = None) -> None: ...


def wifi_for(profile: BoardProfile, project: Project) -> Wifi | None:
    """The WiFi the image carries, or None."""
    if profile.wifi is None:
        if project.wifi:
            raise BuildError(
                f"board {profile.name} has no WiFi, but fleet.toml asks for it ([image] wifi)"
            )
        return None
    wanted = profile.wifi.default if project.wifi is None else project.wifi
    return profile.wifi if wanted else None


def packages(profile: BoardProfile, project: Project) -> list[str]:
    wifi = wifi_for(profile, project)
    if wifi is None:
        return []
    return [CLIENT_PACKAGE, *([wifi.firmware_package] if wifi.firmware_package else [])]


def modules(profile: BoardProfile, project: Project) -> list[str]:
    wifi = wifi_for(profile, project)
    found = list(wifi.modules) if wifi else []
    if profile.gadget is not None:
        found += profile.gadget.modules
    return found


def stage(
    staged: Stage, profile: BoardProfile, project: Project, roots: dict[str, Path]
) -> list[str]:
    """Add the WiFi client and the chip's firmware; returns the programs added (their
    libraries are resolved with the rest)."""
    wifi = wifi_for(profile, project)
    if wifi is None:
        return []
    client = roots[CLIENT_PACKAGE] / CLIENT_IN_PACKAGE
    if not client.is_file():
        raise BuildError(f"{CLIENT_PACKAGE} has no {CLIENT_IN_PACKAGE}")
    staged.add_file(CLIENT, client, CLIENT_PACKAGE, 0o755)
    for rel in wifi.firmware:
        assert wifi.firmware_package is not None
        source = roots[wifi.firmware_package] / rel
        # Debian keeps some chips' files once, under cypress/, with links from brcm/.
        if not source.is_file():
            raise BuildError(f"{wifi.firmware_package} has no {rel} (board {profile.name})")
        staged.add_file(rel, source.resolve(), wifi.firmware_package)
    return [CLIENT]
