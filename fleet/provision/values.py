"""Single provisioning values, each checked as it comes in from outside (a command
line, a settings file, key files a person picked): hostname, serial, SSH public keys,
the network, and the app's config files with their places on the board."""

from __future__ import annotations

import base64
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from fleet.errors import UsageError

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


@dataclass(frozen=True)
class PullSettings:
    """fleet/pull on partition 1: where the board polls for updates (docs/pull.md). Each
    field left None keeps the image's [pull] default."""

    url: str | None = None
    group: str | None = None
    interval_s: int | None = None
    jitter_s: int | None = None

    def given(self) -> list[str]:
        """``key=value`` for each field set, as partition 1's fleet/pull holds them."""
        pairs = (
            ("url", self.url),
            ("group", self.group),
            ("interval", self.interval_s),
            ("jitter", self.jitter_s),
        )
        return [f"{key}={value}" for key, value in pairs if value is not None]

    def render(self) -> str:
        return "\n".join(self.given()) + "\n"


def parse_pull(
    url: str | None, group: str | None, interval: int | None, jitter: int | None
) -> PullSettings | None:
    from fleet.project import PULL_GROUP, PULL_URL

    if url is None and group is None and interval is None and jitter is None:
        return None
    if url is not None and not PULL_URL.match(url):
        raise UsageError(f"--pull-url {url!r}: an http:// or https:// URL, no spaces or quotes")
    if group is not None and not PULL_GROUP.match(group):
        raise UsageError(f"--pull-group {group!r}: lower-case letters, digits, '.', '_', '-'")
    if interval is not None and interval < 1:
        raise UsageError("--pull-interval: at least 1 second")
    if jitter is not None and jitter < 0:
        raise UsageError("--pull-jitter: 0 or more seconds")
    return PullSettings(url.rstrip("/") if url else None, group, interval, jitter)
