"""``fleet serve --map FILE``: boards mapped to releases by serial, MAC or address, each
with its own settings, and the resolver that turns (client, path) into bytes.

The map is TOML::

    [defaults]                      # optional: what every board gets unless it says
    release = "out/release"
    authorized_keys = ["keys/ops.pub"]

    [[board]]
    name = "kiosk-01"               # also its hostname unless hostname is given
    serial = "10000000a1b2c3d4"     # and/or mac = "dc:a6:32:01:36:c2", address = "192.0.2.10"
    release = "out/release-2"       # or prefix = "lab/kiosk-01/" (TFTP_PREFIX=1's string)

A board's tree is its release's tree with its settings where a card's first partition
has them (``fleet/hostname``, ``fleet/authorized_keys``), as ``fleet flash`` writes
them. Each release is verified once, however many boards use it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from fleet.errors import ConfigError
from fleet.netboot import packets
from fleet.netboot.layouts import ROM_FILES, mac_folder, serial_folder, split_board
from fleet.netboot.paths import BadPath, clean
from fleet.netboot.server import Refusal
from fleet.netboot.tree import Tree, load_release, make_tree
from fleet.provision.values import check_hostname, read_key_file
from fleet.schema import Table, load_toml
from signing.policy import TrustSet

MAX_SEEN = 4096


@dataclass(frozen=True)
class Board:
    name: str
    tree: Tree
    serial: str | None = None  # its TFTP folder: low 8 hex digits
    mac: str | None = None  # dc-a6-32-01-36-c2
    address: str | None = None
    prefix: str | None = None  # TFTP_PREFIX_STR, lower case, ending in "/"


@dataclass
class BoardMap:
    boards: list[Board]
    default: Tree | None = None  # --release: any client not in the map
    seen: dict[str, Board] = field(default_factory=dict)  # address -> board it named

    def __post_init__(self) -> None:
        self.by_serial = {b.serial: b for b in self.boards if b.serial}
        self.by_mac = {b.mac: b for b in self.boards if b.mac}
        self.by_address = {b.address: b for b in self.boards if b.address}
        # longest first: "lab/a/" is not taken for "lab/a/b/"'s board
        self.by_prefix = sorted(
            ((b.prefix, b) for b in self.boards if b.prefix), key=lambda p: -len(p[0])
        )

    def _prefixed(self, path: str) -> tuple[Board, str] | None:
        folded = path.lower()
        for prefix, board in self.by_prefix:
            if folded.startswith(prefix):
                return board, path[len(prefix) :]
        return None

    def resolve(self, ip: str, path: str) -> tuple[str, bytes]:
        board: Board | None = None
        prefixed = self._prefixed(path)
        if prefixed is not None:
            kind, key = "prefix", None
            board, rest = prefixed
        else:
            kind, key, rest = split_board(path)  # type: ignore[assignment]
        if kind is not None:
            if board is None:
                board = (self.by_serial if kind == "serial" else self.by_mac).get(key or "")
            if board is None:
                # a Pi 4 then asks at the root: answered there if its address is known
                raise Refusal(packets.NOT_FOUND, f"unknown board {kind} {key}")
            if len(self.seen) >= MAX_SEEN and ip not in self.seen:
                self.seen.pop(next(iter(self.seen)))  # the oldest: bounded memory
            self.seen[ip] = board
        else:
            board = self.by_address.get(ip) or self.seen.get(ip)
        tree = board.tree if board is not None else self.default
        if tree is None and rest in ROM_FILES:
            # a Pi 3's ROM asks before it names its serial folder: the first stage is
            # the same firmware file for every board that has one
            tree = next((b.tree for b in self.boards if b.tree.get(rest) is not None), None)
            if tree is None:  # bootsig.bin, normally: the ROM expects it to be missing
                raise Refusal(packets.NOT_FOUND, "file not found")
        if tree is None:
            raise Refusal(packets.ACCESS, f"unknown board at {ip}")
        data = tree.get(rest)
        if data is None:
            raise Refusal(packets.NOT_FOUND, "file not found")
        return (board.name if board is not None else ip), data


def single(tree: Tree) -> BoardMap:
    return BoardMap([], default=tree)


def load_map(path: Path, trust: TrustSet) -> BoardMap:
    doc = Table(load_toml(path), str(path))
    base = path.parent
    defaults = doc.opt_table("defaults") or Table({}, str(path), "defaults.")
    default_release = defaults.opt_str("release")
    default_keys = defaults.str_list("authorized_keys", [])
    defaults.reject_unknown()
    trees: dict[Path, Tree] = {}
    boards: list[Board] = []
    seen: dict[str, str] = {}
    for entry in doc.tables("board"):
        name = check_hostname(entry.str("name"), f"{path}: {entry.prefix}name")
        release = entry.opt_str("release") or default_release
        if release is None:
            raise entry.error("release", "missing (and no [defaults] release)")
        folder = (base / release).resolve()
        if folder not in trees:
            trees[folder] = load_release(folder, trust)
        serial = entry.opt_str("serial")
        mac = entry.opt_str("mac")
        address = entry.opt_str("address")
        prefix = _prefix(entry, entry.opt_str("prefix"))
        hostname = check_hostname(entry.str("hostname", name), f"{path}: {entry.prefix}hostname")
        keys = entry.str_list("authorized_keys", default_keys)
        entry.reject_unknown()
        ids = _identity(entry, serial, mac, address) if prefix is None else [f"prefix {prefix}"]
        if prefix is not None and (serial or mac or address):
            raise entry.error("prefix", "a board with a prefix is known by it alone")
        for ident in ids:
            if ident in seen:
                raise entry.error(ident.split(" ", 1)[0], f"{ident} is also {seen[ident]}")
            seen[ident] = name
        extra = {"fleet/hostname": f"{hostname}\n".encode()}
        lines = [line for k in keys for line in read_key_file(base / k)]
        if lines:
            extra["fleet/authorized_keys"] = ("\n".join(lines) + "\n").encode()
        tree = trees[folder]
        boards.append(
            Board(
                name,
                make_tree({**tree.files, **extra}, tree.label),
                serial_folder(serial) if serial else None,
                mac_folder(mac) if mac else None,
                address,
                prefix,
            )
        )
    doc.reject_unknown()
    if not boards:
        raise ConfigError(f"{path}: no [[board]] entries")
    return BoardMap(boards)


def _prefix(entry: Table, prefix: str | None) -> str | None:
    """TFTP_PREFIX=1's string (the bootloader puts it as it is before each file name):
    a folder path such as ``lab/kiosk-01/``, with nothing a path may not hold."""
    if prefix is None:
        return None
    if not prefix.endswith("/") or prefix.startswith("/"):
        raise entry.error("prefix", f"{prefix!r} must be a folder path ending in '/' (lab/pi4-a/)")
    try:
        clean(prefix[:-1])
    except BadPath as exc:
        raise entry.error("prefix", f"{prefix!r}: {exc}") from None
    return prefix.lower()


def _identity(entry: Table, serial: str | None, mac: str | None, address: str | None) -> list[str]:
    ids = []
    if serial is not None:
        if serial_folder(serial) is None:
            raise entry.error("serial", f"{serial!r} is not a Raspberry Pi serial (8 or 16 hex)")
        ids.append(f"serial {serial_folder(serial)}")
    if mac is not None:
        if mac_folder(mac) is None:
            raise entry.error("mac", f"{mac!r} is not a MAC address")
        ids.append(f"mac {mac_folder(mac)}")
    if address is not None:
        try:
            ipaddress.IPv4Address(address)
        except ValueError:
            raise entry.error("address", f"{address!r} is not an IPv4 address") from None
        ids.append(f"address {address}")
    if not ids:
        raise entry.error("serial", "a board needs a serial, mac, address or prefix")
    return ids
