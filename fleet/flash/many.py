"""Flash several targets in one run: cards in readers, or boards booted from their USB
boot ROM one after another, each written as soon as it is there.

Each target is a whole ``flash`` of its own in its own thread: its own safety checks,
its own exclusive hold, its own reading of the image (the page cache serves the second
reader of a raw image; a compressed one is decompressed once per target, so the CPU
time per GiB written stays flat as targets are added), its own read-back and its own
settings. A failure is caught at the target's edge and becomes that target's outcome:
one bad card never stops the others. Ctrl-C stops every write at its next chunk, and
each target then says what state it is left in.
"""

from __future__ import annotations

import string
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fleet.bmap import Bmap
from fleet.errors import FleetError, UsageError
from fleet.flash.discovery import BlockDevice, device_info
from fleet.flash.flasher import PhaseHook
from fleet.flash.flasher import flash as flash_one
from fleet.flash.safety import check_target, exclusive, unmount_all
from fleet.flash.source import open_image

if TYPE_CHECKING:
    from fleet.provision import Settings

# More writers than this gain nothing on one host controller and cost a thread each.
MAX_PARALLEL = 16


@dataclass(frozen=True)
class Target:
    node: str  # /dev/sdb
    n: int  # its place in the run, from 1: the {n} of --hostname patterns
    serial: str = ""  # the USB-boot board's serial, when it came that way


@dataclass(frozen=True)
class Outcome:
    node: str
    n: int
    serial: str
    hostname: str | None
    bytes_written: int
    seconds: float
    verified: bool
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.node,
            "n": self.n,
            "serial": self.serial or None,
            "hostname": self.hostname,
            "bytes_written": self.bytes_written,
            "seconds": round(self.seconds, 3),
            "verified": self.verified,
            "ok": self.ok,
            "error": self.error,
        }


# ------------------------------------------------------------------ hostname patterns

_FIELDS = {"n", "serial"}


def check_pattern(pattern: str) -> None:
    """Refuse a --hostname pattern with fields other than {n} (with an optional width
    such as {n:02}) and {serial}: it comes from the command line and is formatted."""
    try:
        parts = list(string.Formatter().parse(pattern))
    except ValueError as exc:
        raise UsageError(f"--hostname {pattern!r}: {exc}") from None
    for _text, field, spec, conversion in parts:
        if field is None:
            continue
        if field not in _FIELDS or conversion or (spec and (field != "n" or not spec.isdigit())):
            raise UsageError(
                f"--hostname {pattern!r}: only {{n}}, {{n:02}} and {{serial}} may be filled in"
            )


def is_pattern(pattern: str) -> bool:
    return any(field for _t, field, _s, _c in string.Formatter().parse(pattern))


def hostname_for(pattern: str, target: Target) -> str:
    check_pattern(pattern)
    if "{serial" in pattern and not target.serial:
        raise UsageError(f"--hostname {pattern!r} needs a serial, and {target.node} has none")
    return pattern.format(n=target.n, serial=target.serial.lower())


# ----------------------------------------------------------------------- one target


@dataclass(frozen=True)
class Plan:
    """What every target of the run gets."""

    image: Path
    bmap: Bmap | None
    bmap_path: Path | None
    size: int | None
    verify: bool
    unmount: bool
    settings_for: Callable[[Target], Settings | None]


class Cancelled(KeyboardInterrupt):
    """Raised inside a target's write loop after Ctrl-C, so that ``flash`` reports the
    device's state exactly as a single interrupted flash does."""


def flash_target(
    plan: Plan,
    target: Target,
    phase: PhaseHook | None = None,
    cancel: threading.Event | None = None,
    device: BlockDevice | None = None,
) -> Outcome:
    """One target from checks to read-back and settings; never raises."""
    started = time.monotonic()
    hostname: str | None = None
    try:
        settings = plan.settings_for(target)
        hostname = settings.hostname if settings is not None else None
        device = device or device_info(target.node)
        check_target(device, plan.size, allow_system=None, unmount=plan.unmount)
        if plan.unmount and device.mounts:
            unmount_all(device)
        with exclusive(device) as held, open_image(plan.image) as source:
            result = flash_one(
                source,
                plan.bmap,
                plan.bmap_path,
                device,
                held,
                verify=plan.verify,
                phase=_cancellable(phase, cancel),
            )
            if settings is not None:
                from fleet import provision

                provision.write(Path(device.node), settings, held_fd=held[0])
    except FleetError as exc:
        return _failed(target, hostname, started, str(exc))
    except OSError as exc:
        return _failed(target, hostname, started, f"{target.node}: {exc.strerror or exc}")
    except Exception as exc:  # a bug must still not take the other targets down
        return _failed(target, hostname, started, f"{target.node}: internal error: {exc!r}")
    return Outcome(
        node=target.node,
        n=target.n,
        serial=target.serial,
        hostname=hostname,
        bytes_written=result.bytes_written,
        seconds=time.monotonic() - started,
        verified=result.verified,
    )


def _failed(target: Target, hostname: str | None, started: float, error: str) -> Outcome:
    return Outcome(
        node=target.node,
        n=target.n,
        serial=target.serial,
        hostname=hostname,
        bytes_written=0,
        seconds=time.monotonic() - started,
        verified=False,
        error=error,
    )


def _cancellable(phase: PhaseHook | None, cancel: threading.Event | None) -> PhaseHook | None:
    if cancel is None:
        return phase

    def hook(name: str, total: int | None) -> Callable[[int], None]:
        advance = phase(name, total) if phase else None

        def step(n: int) -> None:
            if cancel.is_set():
                raise Cancelled
            if advance is not None:
                advance(n)

        return step

    return hook


# ------------------------------------------------------------------------- the run


@dataclass(frozen=True)
class Run:
    outcomes: list[Outcome]
    stopped: str | None  # why targets stopped coming before all were there
    interrupted: bool

    @property
    def ok(self) -> bool:
        return bool(self.outcomes) and all(o.ok for o in self.outcomes) and not self.stopped


def run_all(
    targets: Iterable[Target],
    one: Callable[[Target, threading.Event], Outcome],
    on_start: Callable[[Target], None] | None = None,
) -> Run:
    """Start each target as it comes and wait for all of them. ``targets`` may block
    (waiting for the next card) and may raise FleetError when it gives up; the targets
    already started are then finished, and the reason is kept."""
    cancel = threading.Event()
    futures: list[Future[Outcome]] = []
    stopped: str | None = None
    interrupted = False
    with ThreadPoolExecutor(MAX_PARALLEL, thread_name_prefix="flash-target") as pool:
        try:
            try:
                for target in targets:
                    if on_start is not None:
                        on_start(target)
                    futures.append(pool.submit(one, target, cancel))
            except FleetError as exc:
                stopped = str(exc)
            _wait(futures)
        except KeyboardInterrupt:
            interrupted = True
            cancel.set()
            _wait(futures)
    return Run([f.result() for f in futures], stopped, interrupted)


def _wait(futures: list[Future[Outcome]]) -> None:
    # Polled rather than joined, so that Ctrl-C reaches this (the main) thread at once.
    for future in futures:
        while True:
            try:
                future.result(timeout=0.2)
                break
            except TimeoutError:
                continue


def numbered(nodes: Iterable[str], serials: dict[str, str] | None = None) -> Iterator[Target]:
    for n, node in enumerate(nodes, 1):
        yield Target(node, n, (serials or {}).get(node, ""))


def duplicates(devices: list[BlockDevice]) -> None:
    """Refuse one disk named twice (also by two names): two writers on one disk."""
    seen: dict[str, str] = {}
    for d in devices:
        if d.devnum in seen:
            raise UsageError(f"{d.node} is the same disk as {seen[d.devnum]}: name it once")
        seen[d.devnum] = d.node
