"""A board's provisioning settings: the model, built from command-line options on top
of its entry in a settings file (boards.toml), and described for the user."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from fleet.errors import ConfigError, UsageError
from fleet.provision.values import (
    CONFIG_DIR,
    ConfigFile,
    Network,
    PullSettings,
    check_files,
    check_hostname,
    check_serial,
    parse_config_file,
    parse_network,
    parse_pull,
    read_key_file,
)
from fleet.provision.wifi import Wifi
from fleet.provision.wifi import parse as parse_wifi
from fleet.schema import Table, load_toml


@dataclass(frozen=True)
class Settings:
    hostname: str | None = None
    authorized_keys: tuple[str, ...] = ()
    network: Network | None = None
    files: tuple[ConfigFile, ...] | None = None  # None: leave the board's config alone
    recreate_data: bool = False
    serial: str | None = None  # only used to find a board in a settings file
    # Keys a development image lets in to a shell (the lab's); every authorized key may
    # run only the agent's verbs, and a production image ignores these.
    shell_keys: tuple[str, ...] = ()
    wifi: Wifi | None = None
    pull: PullSettings | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "hostname": self.hostname,
            "authorized_keys": len(self.authorized_keys),
            "network": self.network.spec() if self.network else None,
            "config_files": None
            if self.files is None
            else [f"{CONFIG_DIR}/{f.dest}" for f in self.files],
            "recreate_data": self.recreate_data,
            "wifi": None
            if self.wifi is None
            else {"ssid": self.wifi.ssid.decode("utf-8", "replace"), "country": self.wifi.country},
            "pull": None if self.pull is None else dict(self.pull.__dict__),
        }


@dataclass(frozen=True)
class Options:
    """What a command line gave; every field optional."""

    hostname: str | None = None
    key_files: tuple[Path, ...] = ()
    network: str | None = None
    config_files: tuple[str, ...] = ()
    settings_file: Path | None = None
    serial: str | None = None
    recreate_data: bool = False
    wifi_ssid: str | None = None
    wifi_psk_file: Path | None = None
    wifi_country: str | None = None
    pull_url: str | None = None
    pull_group: str | None = None
    pull_interval: int | None = None
    pull_jitter: int | None = None


def from_options(opts: Options) -> Settings:
    """Settings from command-line options, on top of the settings file's entry for this
    board (found by hostname, else serial) when ``--settings`` is given: options win."""
    base = Settings()
    if opts.settings_file is not None:
        base = SettingsFile.load(opts.settings_file).find(
            hostname=opts.hostname, serial=opts.serial
        )
    keys: list[str] = []
    for path in opts.key_files:
        keys.extend(read_key_file(path))
    settings = replace(
        base,
        hostname=check_hostname(opts.hostname, "--hostname") if opts.hostname else base.hostname,
        authorized_keys=tuple(keys) if keys else base.authorized_keys,
        network=parse_network(opts.network) if opts.network else base.network,
        files=check_files([parse_config_file(s) for s in opts.config_files])
        if opts.config_files
        else base.files,
        recreate_data=opts.recreate_data or base.recreate_data,
        wifi=parse_wifi(opts.wifi_ssid, opts.wifi_psk_file, opts.wifi_country)
        if opts.wifi_ssid is not None
        else base.wifi,
        pull=parse_pull(opts.pull_url, opts.pull_group, opts.pull_interval, opts.pull_jitter)
        or base.pull,
    )
    if opts.wifi_ssid is None and (opts.wifi_psk_file or opts.wifi_country):
        raise UsageError("--wifi-psk-file and --wifi-country need --wifi-ssid")
    return settings


@dataclass(frozen=True)
class SettingsFile:
    """``boards.toml``: defaults plus one ``[[board]]`` entry per board, keyed by its
    hostname and optionally its serial. Paths are relative to the file's folder."""

    path: Path
    boards: tuple[Settings, ...]

    @classmethod
    def load(cls, path: Path) -> SettingsFile:
        top = Table(load_toml(path), str(path))
        base = path.parent
        defaults = _entry(top.table("defaults", required=False), base, need_hostname=False)
        boards: list[Settings] = []
        hostnames: dict[str, int] = {}
        serials: dict[str, int] = {}
        for index, table in enumerate(top.tables("board")):
            entry = _entry(table, base, need_hostname=True)
            merged = Settings(
                hostname=entry.hostname,
                serial=entry.serial,
                authorized_keys=entry.authorized_keys or defaults.authorized_keys,
                network=entry.network or defaults.network,
                files=entry.files if entry.files is not None else defaults.files,
                recreate_data=entry.recreate_data or defaults.recreate_data,
                wifi=entry.wifi or defaults.wifi,
                pull=entry.pull or defaults.pull,
            )
            assert merged.hostname is not None
            for key, seen, what in (
                (merged.hostname.lower(), hostnames, "hostname"),
                (merged.serial, serials, "serial"),
            ):
                if key is None:
                    continue
                if key in seen:
                    raise ConfigError(
                        f"{path}: board[{index}] has the same {what} {key!r} as board[{seen[key]}]"
                    )
                seen[key] = index
            boards.append(merged)
        top.reject_unknown()
        if not boards:
            raise ConfigError(f"{path}: no [[board]] entries")
        return cls(path, tuple(boards))

    def find(self, hostname: str | None = None, serial: str | None = None) -> Settings:
        if hostname is None and serial is None:
            raise UsageError(
                f"{self.path} holds settings for {len(self.boards)} boards: say which one "
                "with --hostname or --serial"
            )
        by_name = [
            b
            for b in self.boards
            if hostname and b.hostname and b.hostname.lower() == hostname.lower()
        ]
        by_serial = [b for b in self.boards if serial and b.serial == serial]
        if hostname and serial and by_name and by_serial and by_name[0] is not by_serial[0]:
            raise UsageError(
                f"{self.path}: hostname {hostname!r} and serial {serial!r} name different boards"
            )
        found = by_name or by_serial
        if not found:
            key = f"hostname {hostname!r}" if hostname else f"serial {serial!r}"
            if hostname and serial:
                key = f"hostname {hostname!r} or serial {serial!r}"
            raise UsageError(f"{self.path}: no board with {key}")
        return found[0]


def _entry(table: Table, base: Path, need_hostname: bool) -> Settings:
    hostname = table.str("hostname") if need_hostname else None
    serial = table.opt_str("serial")
    keys: list[str] = []
    for index, name in enumerate(table.str_list("authorized_keys", [])):
        try:
            keys.extend(read_key_file(_resolve(base, name)))
        except UsageError as exc:
            raise table.error(f"authorized_keys[{index}]", str(exc)) from exc
    network = None
    files = None
    for key, value, check in (
        ("hostname", hostname, check_hostname),
        ("serial", serial, check_serial),
    ):
        try:
            if value is not None:
                check(value, "value")
        except UsageError as exc:
            raise table.error(key, str(exc).removeprefix("value: ")) from exc
    if hostname is not None:
        hostname = check_hostname(hostname, "value")
    spec = table.opt_str("network")
    if spec is not None:
        try:
            network = parse_network(spec, "value")
        except UsageError as exc:
            raise table.error("network", str(exc).removeprefix("value: ")) from exc
    if "config_files" in table.data:
        specs = table.str_list("config_files")
        parsed = []
        for index, spec_ in enumerate(specs):
            try:
                parsed.append(parse_config_file(spec_, base, "value"))
            except UsageError as exc:
                raise table.error(
                    f"config_files[{index}]", str(exc).removeprefix("value: ")
                ) from exc
        try:
            files = check_files(parsed)
        except UsageError as exc:
            raise table.error("config_files", str(exc)) from exc
    recreate = table.bool("recreate_data", False)
    wifi = None
    ssid = table.opt_str("wifi_ssid")
    psk_file = table.opt_str("wifi_psk_file")
    country = table.opt_str("wifi_country")
    if ssid is not None:
        try:
            wifi = parse_wifi(ssid, _resolve(base, psk_file) if psk_file else None, country, "wifi")
        except UsageError as exc:
            raise table.error("wifi_ssid", str(exc)) from exc
    elif psk_file is not None or country is not None:
        raise table.error("wifi_ssid", "missing (wifi_psk_file and wifi_country need it)")
    try:
        pull = parse_pull(
            table.opt_str("pull_url"),
            table.opt_str("pull_group"),
            table.opt_int("pull_interval"),
            table.opt_int("pull_jitter"),
        )
    except UsageError as exc:
        raise table.error("pull_url", str(exc)) from exc
    table.reject_unknown()
    return Settings(hostname, tuple(keys), network, files, recreate, serial, wifi=wifi, pull=pull)


def _resolve(base: Path, name: str) -> Path:
    path = Path(name).expanduser()
    return path if path.is_absolute() else base / path


def describe(settings: Settings) -> str:
    parts = []
    if settings.hostname:
        parts.append(f"hostname {settings.hostname}")
    if settings.authorized_keys:
        parts.append(f"{len(settings.authorized_keys)} authorized key(s)")
    if settings.network:
        parts.append(f"network {settings.network.spec()}")
    if settings.files is not None:
        parts.append(f"{len(settings.files)} config file(s)")
    if settings.recreate_data:
        parts.append("recreate damaged data")
    if settings.wifi is not None:
        parts.append(settings.wifi.describe())
    if settings.pull is not None:
        parts.append("pull " + " ".join(settings.pull.given()))
    return ", ".join(parts) or "nothing"


def with_defaults(settings: Settings | None, hostname: str, keys: Sequence[str]) -> Settings:
    """``settings`` with ``hostname`` when none was given and ``keys`` always allowed first
    (the lab's own key, so the lab can reach every board it boots)."""
    base = settings or Settings()
    merged = list(keys) + [k for k in base.authorized_keys if k not in keys]
    return replace(base, hostname=base.hostname or hostname, authorized_keys=tuple(merged))
