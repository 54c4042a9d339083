"""Per-board provisioning settings: hostname, authorized SSH keys, network, the app's
config files, and a one-shot request to recreate a damaged data filesystem.

Everything here is outside input (command line, a settings file, key files a person
picked), so every value is checked before a single byte is written. The settings go
into the ``fleet/`` folder of the disk's first (FAT) partition, beside the boot state,
the way Raspberry Pi Imager customises a card; the signed slot payloads never change.
The board reads them at every boot (fleet/device/rc.sysinit). Layout on partition 1::

    fleet/hostname         one line
    fleet/authorized_keys  OpenSSH authorized_keys lines
    fleet/network          key=value lines: mode=dhcp, or mode=static + address etc.
    fleet/files/...        copied to /data/app/config/... (a mirror) at every boot
    fleet/data-recreate    present: recreate the data filesystem if it is damaged
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

from fleet.errors import ConfigError, UsageError
from fleet.run import run
from fleet.schema import Table, load_toml

MTOOLS_ENV = {"MTOOLS_SKIP_CHECK": "1", "MTOOLS_NO_VFAT": "0"}
FIRMWARE_PARTITION = 1
CONFIG_DIR = "/data/app/config"
# Partition 1 also holds the bootloader and the boot state; keep the app's files small.
MAX_FILE_BYTES = 256 * 1024
MAX_FILES_BYTES = 1024 * 1024
MAX_KEYS_BYTES = 64 * 1024

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_SERIAL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
_PATH_PART = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9._+-]{0,127}")
KEY_TYPES = (
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
)


@dataclass(frozen=True)
class Network:
    """``dhcp`` (address None) or a static IPv4 address with optional gateway and DNS.
    IPv4 only: the board configures it with busybox ifconfig and route."""

    address: ipaddress.IPv4Interface | None = None
    gateway: ipaddress.IPv4Address | None = None
    dns: tuple[ipaddress.IPv4Address, ...] = ()

    @property
    def mode(self) -> str:
        return "dhcp" if self.address is None else "static"

    def spec(self) -> str:
        if self.address is None:
            return "dhcp"
        parts = [str(self.address)]
        if self.gateway is not None:
            parts.append(str(self.gateway))
        parts.extend(str(d) for d in self.dns)
        return "static:" + ",".join(parts)

    def render(self) -> str:
        """The ``fleet/network`` file: plain key=value lines the board parses (never
        sources) with the netmask already worked out, since busybox has no prefix math."""
        if self.address is None:
            return "mode=dhcp\n"
        lines = [
            "mode=static",
            f"address={self.address.ip}",
            f"prefix={self.address.network.prefixlen}",
            f"netmask={self.address.netmask}",
        ]
        if self.gateway is not None:
            lines.append(f"gateway={self.gateway}")
        if self.dns:
            lines.append("dns=" + " ".join(str(d) for d in self.dns))
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class ConfigFile:
    """A host file that becomes ``/data/app/config/DEST`` on the board."""

    source: Path
    dest: PurePosixPath  # relative to CONFIG_DIR
    data: bytes


@dataclass(frozen=True)
class Settings:
    hostname: str | None = None
    authorized_keys: tuple[str, ...] = ()
    network: Network | None = None
    files: tuple[ConfigFile, ...] | None = None  # None: leave the board's config alone
    recreate_data: bool = False
    serial: str | None = None  # only used to find a board in a settings file

    def as_dict(self) -> dict[str, object]:
        return {
            "hostname": self.hostname,
            "authorized_keys": len(self.authorized_keys),
            "network": self.network.spec() if self.network else None,
            "config_files": None
            if self.files is None
            else [f"{CONFIG_DIR}/{f.dest}" for f in self.files],
            "recreate_data": self.recreate_data,
        }


# ---- validation of single values -------------------------------------------------------


def check_hostname(value: str, where: str = "hostname") -> str:
    name = value.strip()
    if not name or len(name) > 253 or not _HOSTNAME.fullmatch(name):
        raise UsageError(
            f"{where}: {value!r} is not a valid hostname (letters, digits and '-', "
            "labels of 1-63 characters separated by dots, no '-' at either end)"
        )
    return name


def check_serial(value: str, where: str = "serial") -> str:
    if not _SERIAL.fullmatch(value):
        raise UsageError(f"{where}: {value!r} is not a board serial (letters, digits, ._:-)")
    return value


def parse_authorized_keys(text: str, where: str) -> tuple[str, ...]:
    """The public-key lines of an authorized_keys or .pub file, each checked: a known key
    type, a base64 blob that really holds a key of that type, no control characters."""
    if "PRIVATE KEY" in text:
        raise UsageError(f"{where}: this is a private key; give the public key (.pub) file")
    keys: list[str] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        at = f"{where}:{number}"
        if any(ord(c) < 32 or ord(c) == 127 for c in line):
            raise UsageError(f"{at}: control characters in a key line")
        words = line.split()
        kinds = [i for i, w in enumerate(words) if w in KEY_TYPES]
        if not kinds or kinds[0] + 1 >= len(words):
            raise UsageError(
                f"{at}: not an SSH public key line (expected e.g. 'ssh-ed25519 AAAA... comment')"
            )
        kind_at = kinds[0]
        kind, blob = words[kind_at], words[kind_at + 1]
        try:
            decoded = base64.b64decode(blob, validate=True)
        except ValueError as exc:
            raise UsageError(f"{at}: the key's base64 data is broken") from exc
        if len(decoded) < 4 or decoded[4 : 4 + int.from_bytes(decoded[:4], "big")] != (
            kind.encode()
        ):
            raise UsageError(f"{at}: the key data is not a {kind} key")
        keys.append(line)
    if not keys:
        raise UsageError(f"{where}: no SSH public key in it")
    return tuple(keys)


def read_key_file(path: Path) -> tuple[str, ...]:
    try:
        if path.stat().st_size > MAX_KEYS_BYTES:
            raise UsageError(f"{path}: too big for an authorized keys file")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise UsageError(f"{path}: no such key file") from exc
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: not a text file (expected an SSH public key)") from exc
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror}") from exc
    return parse_authorized_keys(text, str(path))


def parse_network(spec: str, where: str = "--network") -> Network:
    """``dhcp`` or ``static:ADDR/PREFIX[,GATEWAY[,DNS...]]`` (IPv4)."""
    text = spec.strip()
    if text == "dhcp":
        return Network()
    hint = (
        "expected dhcp or static:ADDR/PREFIX,GATEWAY[,DNS...], e.g. static:192.0.2.10/24,192.0.2.1"
    )
    if not text.startswith("static:"):
        raise UsageError(f"{where}: {spec!r}: {hint}")
    parts = [p.strip() for p in text[len("static:") :].split(",")]
    if "/" not in parts[0]:
        raise UsageError(f"{where}: {spec!r}: the address needs its prefix length ({hint})")
    try:
        address = ipaddress.IPv4Interface(parts[0])
    except ValueError as exc:
        raise UsageError(f"{where}: {spec!r}: bad address {parts[0]!r}: {exc}") from exc
    net = address.network
    if net.prefixlen < 1 or (
        net.prefixlen < 31 and address.ip in (net.network_address, net.broadcast_address)
    ):
        raise UsageError(f"{where}: {spec!r}: {address.ip} is not a host address of {net}")
    try:
        others = [ipaddress.IPv4Address(p) for p in parts[1:]]
    except ValueError as exc:
        raise UsageError(f"{where}: {spec!r}: {exc}") from exc
    gateway = others[0] if others else None
    if gateway is not None and (gateway not in net or gateway == address.ip):
        raise UsageError(f"{where}: {spec!r}: gateway {gateway} must be another address in {net}")
    return Network(address, gateway, tuple(others[1:]))


def check_dest(dest: str, where: str) -> PurePosixPath:
    """A config file's place, relative to /data/app/config: plain names only, so nothing
    lands outside the app's config folder or on the read-only root."""
    text = dest.strip()
    if text.startswith(CONFIG_DIR + "/"):
        text = text[len(CONFIG_DIR) + 1 :]
    path = PurePosixPath(text)
    if not text or path.is_absolute() or "\\" in text:
        raise UsageError(
            f"{where}: DEST {dest!r} must be a relative path inside {CONFIG_DIR} (e.g. app.conf)"
        )
    for part in text.split("/"):
        if part in ("", ".", ".."):
            raise UsageError(f"{where}: DEST {dest!r} may not contain '..', '.' or empty parts")
        if not _PATH_PART.fullmatch(part):
            raise UsageError(
                f"{where}: DEST {dest!r}: {part!r} is not a plain file name "
                "(letters, digits and ._+-, not starting with '.')"
            )
    if len(path.parts) > 8:
        raise UsageError(f"{where}: DEST {dest!r} is nested too deep (at most 8 levels)")
    return path


def parse_config_file(
    spec: str, base: Path | None = None, where: str = "--config-file"
) -> ConfigFile:
    """``SRC:DEST``: host file SRC (relative to ``base`` when given) to CONFIG_DIR/DEST."""
    src, sep, dest = spec.rpartition(":")
    if not sep or not src:
        raise UsageError(f"{where}: {spec!r}: expected SRC:DEST, e.g. ./app.conf:app.conf")
    target = check_dest(dest, f"{where} {spec!r}")
    source = Path(src)
    if base is not None and not source.is_absolute():
        source = base / source
    try:
        if not source.is_file():
            raise UsageError(f"{where}: {source} is not a file")
        if source.stat().st_size > MAX_FILE_BYTES:
            raise UsageError(
                f"{where}: {source} is larger than {MAX_FILE_BYTES // 1024} KiB; "
                "big data belongs in the app's release, not in provisioning"
            )
        data = source.read_bytes()
    except OSError as exc:
        raise UsageError(f"{where}: cannot read {source}: {exc.strerror}") from exc
    return ConfigFile(source, target, data)


def check_files(files: Sequence[ConfigFile]) -> tuple[ConfigFile, ...]:
    """FAT folds case, so two names that differ only in case are the same file there."""
    seen: dict[str, ConfigFile] = {}
    dirs: set[str] = set()
    total = 0
    for f in files:
        key = str(f.dest).lower()
        if key in seen:
            raise UsageError(
                f"config files {seen[key].source} and {f.source} both go to "
                f"{CONFIG_DIR}/{f.dest} (names are compared without case)"
            )
        seen[key] = f
        dirs.update(str(p).lower() for p in f.dest.parents if str(p) != ".")
        total += len(f.data)
    clash = dirs & set(seen)
    if clash:
        raise UsageError(f"config file {CONFIG_DIR}/{sorted(clash)[0]} is also a folder")
    if total > MAX_FILES_BYTES:
        raise UsageError(
            f"config files add up to {total} bytes; at most {MAX_FILES_BYTES // 1024} KiB fit"
        )
    return tuple(files)


# ---- building settings from options and from a settings file --------------------------


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
    )
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
    try:
        if hostname is not None:
            hostname = check_hostname(hostname, "value")
        if serial is not None:
            serial = check_serial(serial, "value")
    except UsageError as exc:
        key = "hostname" if hostname is not None and not _HOSTNAME.fullmatch(hostname) else "serial"
        raise table.error(key, str(exc).removeprefix("value: ")) from exc
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
    table.reject_unknown()
    return Settings(hostname, tuple(keys), network, files, recreate, serial)


def _resolve(base: Path, name: str) -> Path:
    path = Path(name).expanduser()
    return path if path.is_absolute() else base / path


# ---- writing into partition 1 ----------------------------------------------------------


def firmware_offset(target: Path) -> int:
    """Byte offset of partition 1 on a disk image file or a whole-disk block device."""
    proc = run(["sfdisk", "--json", target], check=False)
    if proc.returncode != 0:
        raise UsageError(f"{target}: no partition table with a first partition")
    try:
        table = json.loads(proc.stdout)["partitiontable"]
        sector = int(table.get("sectorsize", 512))
        first = table["partitions"][0]
        start = int(first["start"]) * sector
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise UsageError(f"{target}: no partition table with a first partition") from exc
    if not str(first["node"]).endswith("1"):
        raise UsageError(f"{target}: partition 1 is missing")
    return start


def _mtools(tool: str, image: str, *args: str | Path, check: bool = True) -> bool:
    proc = run([tool, "-i", image, *args], env=MTOOLS_ENV, check=check)
    return proc.returncode == 0


def write(target: Path, settings: Settings) -> None:
    """Write ``settings`` into partition 1's ``fleet/`` folder of ``target`` (an image
    file or a block device), replacing earlier settings of the same kind.

    Every value was checked when ``settings`` was made, and everything is staged in a
    temporary folder first, so a bad input never leaves a card half-provisioned. FAT
    has no atomic rename-over; the config files go in as a new folder that replaces
    the old one by two renames, so a cut leaves either folder complete."""
    if not target.exists():
        raise UsageError(f"{target}: no such disk image or device")
    image = f"{target}@@{firmware_offset(target)}"
    if not _mtools("mdir", image, "-b", "::/", check=False):
        raise UsageError(f"{target}: partition 1 is not a FAT filesystem")
    with tempfile.TemporaryDirectory(prefix="fleet-provision-") as tmp:
        stage = Path(tmp)
        singles: dict[str, str] = {}
        if settings.hostname is not None:
            singles["hostname"] = settings.hostname + "\n"
        if settings.authorized_keys:
            singles["authorized_keys"] = "\n".join(settings.authorized_keys) + "\n"
        if settings.network is not None:
            singles["network"] = settings.network.render()
        if settings.recreate_data:
            singles["data-recreate"] = "requested by fleet provisioning\n"
        for name, text in singles.items():
            (stage / name).write_text(text)
        if settings.files is not None:
            files = stage / "files.new"
            files.mkdir()
            for f in settings.files:
                dest = files.joinpath(*f.dest.parts)
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(f.data)

        if not _mtools("mdir", image, "-b", "::/fleet", check=False):
            _mtools("mmd", image, "::/fleet")
        for name in singles:
            _mtools("mcopy", image, "-o", "-D", "o", stage / name, f"::/fleet/{name}")
        if settings.files is not None:
            for stale in ("files.new", "files.old"):
                _mtools("mdeltree", image, f"::/fleet/{stale}", check=False)
            _mtools("mcopy", image, "-s", "-D", "o", stage / "files.new", "::/fleet/")
            if settings.files == ():
                _mtools("mmd", image, "::/fleet/files.new", check=False)
            had_old = _mtools("mren", image, "::/fleet/files", "::/fleet/files.old", check=False)
            _mtools("mren", image, "::/fleet/files.new", "::/fleet/files")
            if had_old:
                _mtools("mdeltree", image, "::/fleet/files.old")
    _sync(target)


def _sync(target: Path) -> None:
    fd = os.open(target, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read(target: Path, member: str) -> bytes | None:
    """One file from partition 1 (``fleet/hostname`` etc.), or None if it is absent."""
    image = f"{target}@@{firmware_offset(target)}"
    proc = run(["mtype", "-i", image, f"::/{member}"], env=MTOOLS_ENV, check=False)
    return proc.stdout if proc.returncode == 0 else None


def listing(target: Path, folder: str = "fleet") -> list[str]:
    """Paths of the files under ``folder`` on partition 1 (for checks and tests)."""
    image = f"{target}@@{firmware_offset(target)}"
    proc = run(["mdir", "-i", image, "-/", "-b", f"::/{folder}"], env=MTOOLS_ENV, check=False)
    if proc.returncode != 0:
        return []
    names = [line.strip() for line in proc.stdout.decode().splitlines() if line.strip()]
    return sorted(n.removeprefix("::/") for n in names if not n.endswith("/"))


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
    return ", ".join(parts) or "nothing"


def with_defaults(settings: Settings | None, hostname: str, keys: Sequence[str]) -> Settings:
    """``settings`` with ``hostname`` when none was given and ``keys`` always allowed first
    (the lab's own key, so the lab can reach every board it boots)."""
    base = settings or Settings()
    merged = list(keys) + [k for k in base.authorized_keys if k not in keys]
    return replace(base, hostname=base.hostname or hostname, authorized_keys=tuple(merged))
