"""``fleet provision``: write a board's own settings (hostname, SSH keys, network, app
config files) into a flashed card or disk image; and the same options for ``fleet flash``
and ``fleet lab up``, declared once here."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from fleet.cli.output import JSON_HELP, out, print_json

if TYPE_CHECKING:
    from fleet import provision

HostnameOpt = Annotated[
    str | None,
    typer.Option("--hostname", help="The board's hostname (also its key in --settings)."),
]
KeyOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--authorized-key",
        help="SSH public key file (.pub or authorized_keys) allowed to log in; repeatable.",
    ),
]
NetworkOpt = Annotated[
    str | None,
    typer.Option(
        "--network",
        help="dhcp, or static:ADDR/PREFIX[,GATEWAY[,DNS...]], e.g. static:192.0.2.10/24,192.0.2.1",
    ),
]
ConfigFileOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--config-file",
        help="SRC:DEST - host file SRC becomes /data/app/config/DEST on the board; repeatable.",
    ),
]
SettingsOpt = Annotated[
    Path | None,
    typer.Option(
        "--settings",
        help="Per-board settings file (boards.toml); the board is found by --hostname or --serial.",
    ),
]
SerialOpt = Annotated[
    str | None, typer.Option("--serial", help="The board's serial, to find it in --settings.")
]
RecreateOpt = Annotated[
    bool,
    typer.Option(
        "--recreate-data",
        help="Ask the board to make a new data filesystem at its next boot if its data "
        "partition is damaged (a healthy one is never touched).",
    ),
]


WifiSsidOpt = Annotated[
    str | None,
    typer.Option(
        "--wifi-ssid", help="The WiFi network to join (boards with WiFi; see fleet boards)."
    ),
]
WifiPskOpt = Annotated[
    Path | None,
    typer.Option(
        "--wifi-psk-file",
        help="File with the WiFi passphrase on its first line (or a 64-hex-digit key); the "
        "card gets only the key derived from it, as wpa_passphrase makes it.",
    ),
]
PullUrlOpt = Annotated[
    str | None,
    typer.Option("--pull-url", help="Pull mode: the store the board polls (docs/pull.md)."),
]
PullGroupOpt = Annotated[
    str | None, typer.Option("--pull-group", help="Pull mode: the board's group.")
]
PullIntervalOpt = Annotated[
    int | None, typer.Option("--pull-interval", help="Pull mode: seconds between polls.")
]
PullJitterOpt = Annotated[
    int | None,
    typer.Option("--pull-jitter", help="Pull mode: up to this many seconds added at random."),
]
WifiCountryOpt = Annotated[
    str | None,
    typer.Option("--wifi-country", help="WiFi regulatory country, ISO 3166 (e.g. GB, DE, US)."),
]


def requested(
    hostname: str | None = None,
    keys: list[Path] | None = None,
    network: str | None = None,
    config_files: list[str] | None = None,
    settings: Path | None = None,
    serial: str | None = None,
    recreate_data: bool = False,
    wifi_ssid: str | None = None,
    wifi_psk_file: Path | None = None,
    wifi_country: str | None = None,
    pull_url: str | None = None,
    pull_group: str | None = None,
    pull_interval: int | None = None,
    pull_jitter: int | None = None,
) -> provision.Settings | None:
    """The settings these options ask for, every value checked; None when none is given.

    fleet.provision (TOML, address and key parsing) is imported only when settings are
    given, so that a plain ``fleet flash`` starts without it."""
    optional = (
        wifi_ssid,
        wifi_psk_file,
        wifi_country,
        pull_url,
        pull_group,
        pull_interval,
        pull_jitter,
    )
    if not (hostname or keys or network or config_files or settings or recreate_data) and not any(
        v is not None for v in optional
    ):
        return None
    from fleet import provision

    return provision.from_options(
        provision.Options(
            hostname=hostname,
            key_files=tuple(keys or ()),
            network=network,
            config_files=tuple(config_files or ()),
            settings_file=settings,
            serial=serial,
            recreate_data=recreate_data,
            wifi_ssid=wifi_ssid,
            wifi_psk_file=wifi_psk_file,
            wifi_country=wifi_country,
            pull_url=pull_url,
            pull_group=pull_group,
            pull_interval=pull_interval,
            pull_jitter=pull_jitter,
        )
    )


def check_device(target: Path) -> None:
    """Refuse a block device that ``fleet flash`` would refuse (a system drive, mounted,
    read-only, no medium, RAM or optical) before its settings are written; an image
    file passes. The writer then holds the device with O_EXCL while it writes."""
    try:
        if not stat.S_ISBLK(target.stat().st_mode):
            return
    except OSError:
        return  # the writer names what is missing
    from fleet.flash.discovery import device_info  # pyudev only for a device
    from fleet.flash.safety import check_target

    check_target(device_info(target), None, allow_system=None, unmount=None)


def provision_cmd(
    target: Annotated[
        Path, typer.Argument(help="Disk image file or whole-disk device (e.g. /dev/sdb).")
    ],
    hostname: HostnameOpt = None,
    authorized_key: KeyOpt = None,
    network: NetworkOpt = None,
    config_file: ConfigFileOpt = None,
    settings: SettingsOpt = None,
    serial: SerialOpt = None,
    recreate_data: RecreateOpt = False,
    wifi_ssid: WifiSsidOpt = None,
    wifi_psk_file: WifiPskOpt = None,
    wifi_country: WifiCountryOpt = None,
    pull_url: PullUrlOpt = None,
    pull_group: PullGroupOpt = None,
    pull_interval: PullIntervalOpt = None,
    pull_jitter: PullJitterOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Write per-board settings into TARGET's first partition, leaving the signed slots
    untouched; the board applies them at its next boot.

    Only the settings given change: e.g. --network alone keeps the hostname and keys
    already there. Every value is checked before anything is written.

    Examples:
    fleet provision out/disk.img --hostname kiosk-01 --authorized-key ~/.ssh/id_ed25519.pub;
    fleet provision /dev/sdb --settings boards.toml --hostname kiosk-02;
    fleet provision out/disk.img --wifi-ssid Workshop --wifi-psk-file wifi.txt --wifi-country GB;
    fleet provision out/disk.img --pull-url https://cdn.example.com/fleet --pull-group lobby
    """
    result = requested(
        hostname,
        authorized_key,
        network,
        config_file,
        settings,
        serial,
        recreate_data,
        wifi_ssid,
        wifi_psk_file,
        wifi_country,
        pull_url,
        pull_group,
        pull_interval,
        pull_jitter,
    )
    if result is None:
        raise typer.BadParameter("give at least one setting (see --help)")
    check_device(target)
    from fleet import provision

    provision.write(target, result)
    if json_out:
        print_json({"target": str(target), **result.as_dict()})
        return
    out.print(f"provisioned {target}: {provision.describe(result)}")
