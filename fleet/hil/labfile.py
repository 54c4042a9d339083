"""A hardware-in-the-loop lab file (``hardware-in-loop/labs/*.toml``): its boards, what
each board has (resources) and how the runner drives it (drivers).

Every error is collected before anything runs and all are raised together in one
LabFileError, one per line, sorted by line: ``FILE:LINE: board 'NAME': ...``.
"""

from __future__ import annotations

import re
import string
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar
from urllib.parse import urlsplit

from fleet.boards import boards_dir, get_profile
from fleet.errors import ConfigError, LabError, UsageError

NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,30}")
_HUB = re.compile(r"\d+(-\d+(\.\d+)*)?")  # a uhubctl location: 1-1.4

# Each driver and the resources it can use (any one of them); () needs none.
POWER = {
    "virtual": ("virtual",),
    "uhubctl": ("usb_port",),
    "gpio": ("gpio",),
    "pdu": ("pdu",),
    "command": ("power_command",),
    "manual": (),
}
CONSOLE = {"serial": ("serial",), "qemu": ("virtual",), "none": ()}
PROVISION = {
    "usb-flash": ("usb_disk",),
    "netboot": ("network",),
    "update": ("network", "virtual"),
    "virtual-flash": ("virtual",),
}


class LabFileError(ConfigError):
    """A lab file is wrong; the message holds every problem, one ``FILE:LINE: ...`` a line."""


class _Kind:
    key: ClassVar[str]  # its name in [board.resources]


@dataclass(frozen=True)
class SerialPort(_Kind):
    key: ClassVar[str] = "serial"
    port: str
    baud: int = 115200


@dataclass(frozen=True)
class UsbPort(_Kind):
    key: ClassVar[str] = "usb_port"
    hub: str  # uhubctl location
    port: int


@dataclass(frozen=True)
class GpioLine(_Kind):
    key: ClassVar[str] = "gpio"
    chip: str
    line: int
    active_low: bool = False


@dataclass(frozen=True)
class Pdu(_Kind):
    key: ClassVar[str] = "pdu"
    on: str  # URL templates; {outlet} is replaced by the outlet number
    off: str
    outlet: int | None = None

    def url(self, action: str) -> str:
        template = self.on if action == "on" else self.off
        return template.format(outlet=self.outlet)


@dataclass(frozen=True)
class PowerCommand(_Kind):
    key: ClassVar[str] = "power_command"
    on: tuple[str, ...]
    off: tuple[str, ...]
    cycle: tuple[str, ...] | None = None


@dataclass(frozen=True)
class NetworkAddress(_Kind):
    key: ClassVar[str] = "network"
    address: str
    user: str = "root"
    ssh_port: int = 22
    http_port: int = 8080


@dataclass(frozen=True)
class UsbDisk(_Kind):
    key: ClassVar[str] = "usb_disk"
    device: str


@dataclass(frozen=True)
class VirtualBoard(_Kind):
    """A fleet lab board (fleet.lab) of the same name as the lab board."""

    key: ClassVar[str] = "virtual"
    kind: str  # "qemu" or "sim"


Resource = (
    SerialPort | UsbPort | GpioLine | Pdu | PowerCommand | NetworkAddress | UsbDisk | VirtualBoard
)
R = TypeVar("R", bound=_Kind)


@dataclass(frozen=True)
class Drivers:
    power: str
    console: str
    provision: str


@dataclass(frozen=True)
class LabBoard:
    name: str
    profile: str
    features: tuple[str, ...]
    resources: dict[str, Resource]
    drivers: Drivers
    line: int  # of its [[board]] header

    def resource(self, kind: type[R]) -> R:
        """The board's resource of this class, e.g. ``board.resource(SerialPort)``."""
        found = self.resources.get(kind.key)
        if not isinstance(found, kind):
            raise LabError(f"board {self.name!r} has no {kind.key} resource")
        return found


@dataclass(frozen=True)
class Lab:
    name: str
    path: Path
    boards: tuple[LabBoard, ...]

    def board(self, name: str) -> LabBoard:
        for board in self.boards:
            if board.name == name:
                return board
        known = ", ".join(b.name for b in self.boards)
        raise UsageError(f"lab {self.name!r} has no board {name!r} (known: {known})")

    def select(
        self, profile: str | None = None, features: Sequence[str] = (), names: Sequence[str] = ()
    ) -> list[LabBoard]:
        """The boards, in lab order, that are named (all when ``names`` is empty), of the
        profile (any when None) and have every feature. An unknown name is an error."""
        wanted = {self.board(name).name for name in names}
        return [
            b
            for b in self.boards
            if (not wanted or b.name in wanted)
            and (profile is None or b.profile == profile)
            and all(f in b.features for f in features)
        ]


def load_lab(path: Path) -> Lab:
    shown = _display(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError as exc:
        raise LabFileError(f"{shown}: no such file") from exc
    except OSError as exc:
        raise LabFileError(f"{shown}: cannot read: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise LabFileError(f"{shown}: not UTF-8 text: {exc}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        found = re.search(r"line (\d+)", str(exc))
        raise LabFileError(f"{shown}:{found[1] if found else 1}: not valid TOML: {exc}") from exc
    return _Parser(shown, path, text).lab(data)


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


class _Lines:
    """Where keys are, found by scanning the text: tomllib gives no value line numbers."""

    _HEADER = re.compile(r"\s*\[(\[?)([^\[\]]+)\]\]?\s*(#.*)?$")
    _PART = r"(?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*')"
    _KEY = re.compile(rf"\s*({_PART}(?:\s*\.\s*{_PART})*)\s*=")

    def __init__(self, text: str) -> None:
        self.top: dict[tuple[str, ...], int] = {}
        self.boards: list[tuple[int, dict[tuple[str, ...], int]]] = []
        where: dict[tuple[str, ...], int] = self.top
        prefix: tuple[str, ...] = ()
        in_string = False
        for number, line in enumerate(text.splitlines(), 1):
            # A multi-line string's body may look like a header or a key.
            toggles = (line.count('"""') + line.count("'''")) % 2 == 1
            if in_string:
                in_string = not toggles
                continue
            in_string = toggles
            header = self._HEADER.match(line)
            key = None if header else self._KEY.match(line)
            if header:
                path = self._parts(header[2])
                if header[1] and path == ("board",):
                    self.boards.append((number, {}))
                    where, prefix = self.boards[-1][1], ()
                elif path[0] == "board" and len(path) > 1 and self.boards:
                    where, prefix = self.boards[-1][1], path[1:]
                else:
                    where, prefix = self.top, path
                where.setdefault(prefix, number)
            elif key:
                where.setdefault((*prefix, *self._parts(key[1])), number)

    def _parts(self, dotted: str) -> tuple[str, ...]:
        return tuple(p.strip("\"'") for p in re.findall(self._PART, dotted))

    def find(self, board: int | None, path: tuple[str, ...]) -> int:
        """The line of the longest known prefix of ``path``, else of the board's header."""
        if board is None or board >= len(self.boards):
            where, fallback = self.top, self.top.get(("board",), 1)
        else:
            fallback, where = self.boards[board]
        for end in range(len(path), 0, -1):
            if path[:end] in where:
                return where[path[:end]]
        return fallback


class _Parser:
    def __init__(self, shown: str, path: Path, text: str) -> None:
        self.shown = shown
        self.path = path
        self.lines = _Lines(text)
        self.problems: list[tuple[int, str]] = []
        self.profiles: dict[str, str | None] = {}  # name -> problem, None when known

    def report(self, line: int, message: str) -> None:
        self.problems.append((line, f"{self.shown}:{line}: {message}"))

    def lab(self, data: dict[str, Any]) -> Lab:
        top = _Section(data, _Where(self, None, ""))
        lab = top.table("lab", required=True)
        name = lab.text("name") if lab is not None else ""
        if lab is not None:
            if name and not NAME.fullmatch(name):
                lab.error("name", f"lab.name {name!r}: expected {NAME.pattern}")
            lab.done()
        boards: list[LabBoard] = []
        raw = top.value("board", required=False)
        if raw is _MISSING:
            top.error("board", "no [[board]]: a lab needs at least one board")
        elif not isinstance(raw, list):
            top.wrong("board", "an array of [[board]] tables", raw)
        else:
            first: dict[str, int] = {}
            for index, item in enumerate(raw):
                board = self.board(index, item)
                if board is None:
                    continue
                line = self.lines.find(index, ("name",))
                if board.name and board.name in first:
                    self.report(
                        line,
                        f"board {board.name!r}: duplicate board name "
                        f"(first on line {first[board.name]})",
                    )
                first.setdefault(board.name, line)
                boards.append(board)
        top.done()
        if self.problems:
            self.problems.sort(key=lambda p: p[0])
            raise LabFileError("\n".join(message for _, message in self.problems))
        return Lab(name=name, path=self.path, boards=tuple(boards))

    def board(self, index: int, data: object) -> LabBoard | None:
        where = _Where(self, index, f"board #{index + 1}: ")
        if not isinstance(data, dict):
            where.error((), f"expected a [[board]] table, got {_toml_type(data)}")
            return None
        board = _Section(data, where)
        name = board.text("name")
        if name:
            where.label = f"board {name!r}: "
            if not NAME.fullmatch(name):
                board.error("name", f"name {name!r}: expected {NAME.pattern}")
        profile = board.text("profile")
        if profile:
            self.check_profile(board, profile)
        features = board.texts("features", default=())
        table = board.table("resources", required=False)
        resources = _resources(table)
        # A resource with a bad field is there all the same: say only what is wrong with it.
        present = set(table.data) if table is not None else set()
        drivers = _drivers(board.table("drivers", required=True), resources, present)
        board.done()
        return LabBoard(
            name=name,
            profile=profile,
            features=features,
            resources=resources,
            drivers=drivers,
            line=self.lines.find(index, ()),
        )

    def check_profile(self, board: _Section, name: str) -> None:
        if name not in self.profiles:
            try:
                get_profile(name)
                self.profiles[name] = None
            except ConfigError as exc:
                folder = boards_dir()
                if "/" in name or not (folder / f"{name}.toml").is_file():
                    known = ", ".join(p.stem for p in sorted(folder.glob("*.toml")))
                    self.profiles[name] = f"unknown profile {name!r} (known: {known})"
                else:
                    self.profiles[name] = f"profile {name!r}: {exc}"
        problem = self.profiles[name]
        if problem:
            board.error("profile", problem)


@dataclass
class _Where:
    parser: _Parser
    board: int | None  # index of its [[board]], None at the top level
    label: str  # "board 'NAME': "

    def error(self, path: tuple[str, ...], message: str) -> None:
        self.parser.report(self.parser.lines.find(self.board, path), self.label + message)


_MISSING: Any = object()


class _Section:
    """A table of the file, read field by field; a bad field is reported and a stand-in
    returned, so that reading goes on and every problem is found."""

    def __init__(self, data: dict[str, Any], where: _Where, path: tuple[str, ...] = ()) -> None:
        self.data = data
        self.where = where
        self.path = path
        self.seen: set[str] = set()

    def name(self, key: str) -> str:
        return ".".join((*self.path, key))

    def error(self, key: str, message: str) -> None:
        self.where.error((*self.path, key), message)

    def wrong(self, key: str, expected: str, value: object) -> None:
        self.error(key, f"{self.name(key)}: expected {expected}, got {_toml_type(value)} {value!r}")

    def value(self, key: str, required: bool = True) -> Any:
        self.seen.add(key)
        if key in self.data:
            return self.data[key]
        if required:
            self.error(key, f"missing key '{self.name(key)}'")
        return _MISSING

    def text(self, key: str, default: str | None = None) -> str:
        value = self.value(key, required=default is None)
        if value is _MISSING:
            return default or ""
        if not isinstance(value, str):
            self.wrong(key, "a string", value)
        elif not value.strip():
            self.error(key, f"{self.name(key)}: must not be empty")
        else:
            return value
        return ""

    def choice(self, key: str, choices: Sequence[str], what: str) -> str:
        value = self.text(key)
        if value and value not in choices:
            self.error(key, f"unknown {what} {value!r} (one of: {', '.join(choices)})")
            return ""
        return value

    def integer(self, key: str, low: int, high: int, default: int | None = None) -> int:
        value = self.opt_integer(key, low, high, required=default is None)
        return (default or 0) if value is None else value

    def opt_integer(self, key: str, low: int, high: int, required: bool = False) -> int | None:
        value = self.value(key, required)
        if value is _MISSING:
            return None
        # bool is an int in Python; a TOML boolean is never a number here.
        if not isinstance(value, int) or isinstance(value, bool):
            self.wrong(key, "an integer", value)
        elif not low <= value <= high:
            self.error(key, f"{self.name(key)}: must be {low}..{high}, got {value}")
        else:
            return value
        return None

    def flag(self, key: str, default: bool) -> bool:
        value = self.value(key, required=False)
        if value is _MISSING:
            return default
        if not isinstance(value, bool):
            self.wrong(key, "true or false", value)
            return default
        return value

    def texts(self, key: str, default: tuple[str, ...] | None = None) -> tuple[str, ...]:
        value = self.value(key, required=default is None)
        if value is _MISSING:
            return default or ()
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            self.wrong(key, "an array of non-empty strings", value)
            return ()
        return tuple(value)

    def argv(self, key: str, required: bool = True) -> tuple[str, ...] | None:
        value = self.value(key, required)
        if value is _MISSING:
            return None
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            self.wrong(key, "a command: a non-empty array of strings", value)
        elif not value[0]:
            self.error(key, f"{self.name(key)}: the program name must not be empty")
        else:
            return tuple(value)
        return None

    def url(self, key: str) -> str:
        value = self.text(key)
        if value and (problem := _url_problem(value)):
            self.error(key, f"{self.name(key)}: {problem}, got {value!r}")
            return ""
        return value

    def table(self, key: str, required: bool) -> _Section | None:
        value = self.value(key, required=False)
        if value is _MISSING:
            if required:
                self.error(key, f"missing table '{self.name(key)}'")
            return None
        if not isinstance(value, dict):
            self.wrong(key, "a table", value)
            return None
        return _Section(value, self.where, (*self.path, key))

    def done(self) -> None:
        """Refuse keys nobody read: a typo must not pass silently."""
        for key in self.data:
            if key not in self.seen:
                self.error(key, f"unknown key '{self.name(key)}'")


def _toml_type(value: object) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a float", str: "a string"}
    names.update({list: "an array", dict: "a table"})
    return names.get(type(value), type(value).__name__)


def _url_problem(template: str) -> str | None:
    try:
        fields = [p[1:] for p in string.Formatter().parse(template) if p[1] is not None]
        url = template.format(outlet=1)
    except (ValueError, KeyError, IndexError):
        fields = [("", "", None)]
    if any(field != ("outlet", "", None) for field in fields):
        return "expected a URL whose only placeholder is {outlet}"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return "expected an http:// or https:// URL"
    return None


def _resources(table: _Section | None) -> dict[str, Resource]:
    found: dict[str, Resource] = {}
    if table is None:
        return found
    for kind in table.data:
        table.seen.add(kind)
        build = _BUILDERS.get(kind)
        if build is None:
            table.error(kind, f"unknown resource {kind!r} (one of: {', '.join(_BUILDERS)})")
            continue
        section = table.table(kind, required=True)
        if section is not None:
            found[kind] = build(section)
            section.done()
    return found


def _pdu(s: _Section) -> Pdu:
    pdu = Pdu(on=s.url("on"), off=s.url("off"), outlet=s.opt_integer("outlet", 0, 65535))
    if pdu.outlet is None and "outlet" not in s.data and "{outlet}" in pdu.on + pdu.off:
        s.error("outlet", f"missing key '{s.name('outlet')}': the URLs use {{outlet}}")
    return pdu


def _power_command(s: _Section) -> PowerCommand:
    return PowerCommand(
        on=s.argv("on") or (), off=s.argv("off") or (), cycle=s.argv("cycle", required=False)
    )


def _usb_port(s: _Section) -> UsbPort:
    hub = s.text("hub")
    if hub and not _HUB.fullmatch(hub):
        s.error("hub", f"{s.name('hub')}: expected a uhubctl location such as 1-1.4, got {hub!r}")
    return UsbPort(hub=hub, port=s.integer("port", 1, 255))


def _usb_disk(s: _Section) -> UsbDisk:
    device = s.text("device")
    if device and not device.startswith("/"):
        s.error("device", f"{s.name('device')}: expected an absolute path, got {device!r}")
    return UsbDisk(device=device)


_BUILDERS: dict[str, Callable[[_Section], Resource]] = {
    "serial": lambda s: SerialPort(s.text("port"), s.integer("baud", 50, 4_000_000, 115200)),
    "usb_port": _usb_port,
    "gpio": lambda s: GpioLine(
        s.text("chip"), s.integer("line", 0, 65535), s.flag("active_low", False)
    ),
    "pdu": _pdu,
    "power_command": _power_command,
    "network": lambda s: NetworkAddress(
        s.text("address"),
        s.text("user", default="root"),
        s.integer("ssh_port", 1, 65535, 22),
        s.integer("http_port", 1, 65535, 8080),
    ),
    "usb_disk": _usb_disk,
    "virtual": lambda s: VirtualBoard(s.choice("kind", ("qemu", "sim"), "virtual kind")),
}


def _drivers(table: _Section | None, resources: dict[str, Resource], present: set[str]) -> Drivers:
    if table is None:
        return Drivers("", "", "")
    drivers = Drivers(
        power=table.choice("power", list(POWER), "power driver"),
        console=table.choice("console", list(CONSOLE), "console driver"),
        provision=table.choice("provision", list(PROVISION), "provision driver"),
    )
    for what, driver, needs in (
        ("power", drivers.power, POWER),
        ("console", drivers.console, CONSOLE),
        ("provision", drivers.provision, PROVISION),
    ):
        wanted = needs.get(driver, ())
        if wanted and not any(kind in present for kind in wanted):
            names = " or ".join(repr(kind) for kind in wanted)
            table.error(what, f"{what} driver {driver!r} needs a {names} resource")
    virtual = resources.get("virtual")
    if drivers.console == "qemu" and isinstance(virtual, VirtualBoard) and virtual.kind == "sim":
        table.error("console", "console driver 'qemu' needs a virtual resource of kind 'qemu'")
    table.done()
    return drivers
