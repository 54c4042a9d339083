"""Where a boot's time goes, from a console log: a pure function over (timestamp, line)
pairs, so it reads the virtual lab's stamped console and a real board's serial log alike.

The timestamps are the host's (seconds, any origin; None where a log has none). The board
adds its own clock: every phase line the board's scripts print carries its uptime,
``fleet: [   1.234] boot: NAME`` (seconds since the kernel started, from /proc/uptime).
The bootloader phases come from U-Boot's own lines. A phase's time is the host's stamp
where there is one; a log with no host stamps is charted on the board's clock from
kernel start, and its bootloader phases stay unknown.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# (name, label, the phase it waits for). network, SSH and the app start side by side
# once init runs, so each is charted from init; healthy is charted from the app's start.
PHASES: tuple[tuple[str, str, str | None], ...] = (
    ("machine", "machine start", None),
    ("bootloader", "bootloader", "machine"),
    ("kernel", "kernel start", "bootloader"),
    ("initramfs", "initramfs", "kernel"),
    ("root", "root switched", "initramfs"),
    ("init", "init", "root"),
    ("network", "network", "init"),
    ("ssh", "SSH listening", "init"),
    ("app", "app started", "init"),
    ("healthy", "healthy", "app"),
)
NAMES = tuple(name for name, _, _ in PHASES)

_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|[\x00-\x08\x0b-\x1f\x7f]")
_STAMP = re.compile(r"fleet: \[\s*(\d+(?:\.\d+)?)\] boot: ([a-z]+)")
_UBOOT = re.compile(r"^U-Boot 20\d\d")
_POWER_ON = "fleet-lab: power on"
_KERNEL_HANDOFF = "Starting kernel ..."
_KERNEL_FIRST = re.compile(r"^\[\s*(\d+\.\d+)\] Booting Linux on physical CPU")


@dataclass(frozen=True)
class Phase:
    name: str
    label: str
    after: str | None
    at: float | None  # seconds since machine start (or kernel start, see Chart.origin)
    took: float | None  # seconds since the phase it waits for
    uptime: float | None  # the board's own clock at this phase, when it printed one


@dataclass(frozen=True)
class Chart:
    phases: tuple[Phase, ...]
    origin: str  # "machine" (host stamps) or "kernel" (the board's clock alone)

    def phase(self, name: str) -> Phase:
        return next(p for p in self.phases if p.name == name)

    @property
    def total(self) -> float | None:
        return self.phase("healthy").at

    @property
    def missing(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.phases if p.at is None)

    def to_json(self) -> dict[str, object]:
        return {
            "origin": self.origin,
            "total_s": self.total,
            "missing": list(self.missing),
            "phases": [
                {
                    "name": p.name,
                    "label": p.label,
                    "after": p.after,
                    "at_s": p.at,
                    "took_s": p.took,
                    "uptime_s": p.uptime,
                }
                for p in self.phases
            ],
        }


def clean(line: str) -> str:
    return _ESCAPES.sub("", line).strip()


def last_boot(lines: Sequence[tuple[float | None, str]]) -> list[tuple[float | None, str]]:
    """The lines of the log's last boot. A boot starts at a power-on mark (the lab writes
    one when it starts QEMU) or at a bootloader banner (a board that resets itself
    prints it again), but a power-on's own banner starts nothing new. A log with
    neither (a capture started late) is taken whole."""
    start = 0
    banner_seen = True
    for i, (_, raw) in enumerate(lines):
        line = clean(raw)
        if line.startswith(_POWER_ON):
            start, banner_seen = i, False
        elif _UBOOT.match(line):
            if banner_seen:
                start = i
            banner_seen = True
    return list(lines[start:])


def chart(lines: Iterable[tuple[float | None, str]]) -> Chart:
    """The boot chart of the last boot in ``lines`` (timestamp, console line)."""
    boot = last_boot(list(lines))
    host: dict[str, float] = {}
    uptime: dict[str, float] = {}
    first_host: float | None = None
    for stamp, raw in boot:
        line = clean(raw)
        if stamp is not None and first_host is None:
            first_host = stamp
        found = _STAMP.search(line)
        name: str | None = None
        if line.startswith(_POWER_ON):
            name = "machine"
        elif _UBOOT.match(line):
            name = "bootloader"
        elif line.startswith(_KERNEL_HANDOFF):
            name = "kernel"
        elif (kernel := _KERNEL_FIRST.match(line)) is not None:
            # A kernel that prints (no `quiet`): its first line, on its own clock.
            uptime.setdefault("kernel", float(kernel.group(1)))
            if "kernel" not in host and stamp is not None and "bootloader" not in host:
                host["kernel"] = stamp
            continue
        elif found is not None and found.group(2) in NAMES:
            name = found.group(2)
            uptime.setdefault(name, float(found.group(1)))
        if name is None:
            continue
        if stamp is not None:
            host.setdefault(name, stamp)

    if host:
        origin = "machine"
        zero = host.get("machine", host.get("bootloader", first_host or 0.0))
        host.setdefault("machine", zero)
        at = {name: value - zero for name, value in host.items()}
    else:
        origin = "kernel"
        at = dict(uptime)
        at.setdefault("kernel", 0.0)
    phases = []
    for name, label, after in PHASES:
        value = at.get(name)
        parent = at.get(after) if after else None
        took = value - parent if value is not None and parent is not None else None
        phases.append(Phase(name, label, after, value, took, uptime.get(name)))
    return Chart(tuple(phases), origin)


def parse_stamped(text: str) -> list[tuple[float | None, str]]:
    """Lines of a stamped log, ``SECONDS<TAB>LINE`` (what the lab writes), or a plain
    log's lines with no stamps."""
    pairs: list[tuple[float | None, str]] = []
    for raw in text.splitlines():
        head, tab, rest = raw.partition("\t")
        try:
            pairs.append((float(head), rest) if tab else (None, raw))
        except ValueError:
            pairs.append((None, raw))
    return pairs


def format_table(result: Chart) -> str:
    clock = "since power-on" if result.origin == "machine" else "since kernel start"
    rows = [f"{'phase':<16}{'at (s, ' + clock + ')':>28}{'took (s)':>10}  {'uptime':>8}  after"]

    def num(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    for p in result.phases:
        rows.append(
            f"{p.label:<16}{num(p.at):>28}{num(p.took):>10}  {num(p.uptime):>8}  {p.after or ''}"
        )
    total = "unknown" if result.total is None else f"{result.total:.2f} s"
    rows.append(f"total to a healthy app: {total}")
    if result.missing:
        rows.append(f"phases not found: {', '.join(result.missing)}")
    return "\n".join(rows)
