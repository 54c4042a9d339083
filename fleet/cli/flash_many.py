"""``fleet flash`` with several targets: --device A --device B, --wait --count N, or
--all-removable. Each target gets its own progress, read-back and settings; a summary
table (or --json) ends the run, and the exit code says whether every target succeeded."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from fleet.cli.output import BytesProgress, bytes_progress, note, out, print_json
from fleet.errors import FlashError, UsageError
from fleet.flash.discovery import BlockDevice, device_info, human_size, list_block_devices
from fleet.flash.flasher import PhaseHook
from fleet.flash.many import (
    Outcome,
    Plan,
    Run,
    Target,
    check_pattern,
    duplicates,
    flash_target,
    hostname_for,
    is_pattern,
    numbered,
    run_all,
)
from fleet.flash.wait import default_predicate, new_devices

if TYPE_CHECKING:
    from fleet.provision import Settings

# (hostname or None, serial or None) -> the checked settings, or None when none asked
SettingsMaker = Callable[[str | None, str | None], "Settings | None"]


@dataclass(frozen=True)
class Request:
    """How the targets of this run are found."""

    devices: list[str]
    wait: bool
    count: int | None
    all_removable: bool
    timeout: float | None
    yes: bool
    rpiboot: bool
    rpiboot_files: Path


def is_many(devices: list[str], count: int | None, all_removable: bool) -> bool:
    return len(devices) > 1 or count is not None or all_removable


def check_request(req: Request, hostname: str | None, uses_settings_file: bool) -> None:
    """Refuse option combinations that cannot be meant, before anything is touched."""
    ways = sum((bool(req.devices), req.count is not None, req.all_removable))
    if ways > 1:
        raise UsageError(
            "give the targets one way: --device ..., --wait --count N, or --all-removable"
        )
    if req.count is not None and req.count < 1:
        raise UsageError("--count must be 1 or more")
    if req.count is not None and not (req.wait or req.rpiboot):
        raise UsageError("--count takes that many new targets as they appear: add --wait")
    if req.wait and req.count is None:
        raise UsageError("--wait takes new targets as they appear: with --count N, not a list")
    if req.rpiboot and req.count is None:
        raise UsageError("--rpiboot with several boards needs --count N")
    if hostname and "{serial" in hostname and not req.rpiboot:
        raise UsageError("{serial} is a USB-boot board's serial: only with --rpiboot --count N")
    if req.all_removable and req.yes:
        # every removable disk includes the backup drive nobody thought of: look first
        raise UsageError("--all-removable lists what it would write and asks once; no --yes")
    if hostname and not is_pattern(hostname) and not uses_settings_file:
        raise UsageError(
            f"--hostname {hostname!r} would name every target alike: "
            "use a pattern such as 'kiosk-{n:02}' or 'pi-{serial}'"
        )
    if hostname:
        check_pattern(hostname)


def settings_for(make: SettingsMaker, pattern: str | None) -> Callable[[Target], Settings | None]:
    def one(target: Target) -> Settings | None:
        name = hostname_for(pattern, target) if pattern else None
        return make(name, target.serial or None)

    return one


# ---------------------------------------------------------------------- targets


def _listed(req: Request) -> list[BlockDevice]:
    if req.all_removable:
        found = [d for d in list_block_devices() if d.offered and (d.removable or d.hotplug)]
        if not found:
            raise FlashError("no removable disk found (see fleet devices)")
        return found
    devices = [device_info(node) for node in req.devices]
    duplicates(devices)
    return devices


def _confirm(devices: list[BlockDevice], image: Path, yes: bool) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise FlashError("no terminal to confirm on: pass --yes to write them; nothing was changed")
    for d in devices:
        note(f"  {d.describe()}")
    if not typer.confirm(
        f"Write {image.name} to these {len(devices)} devices? Everything on them is lost"
    ):
        raise FlashError("cancelled; nothing was changed")


def _confirm_waiting(count: int, image: Path, yes: bool) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise FlashError("no terminal to confirm on: pass --yes to write new targets as they come")
    question = f"Write {image.name} to each of the next {count} cards or boards that appear?"
    if not typer.confirm(question):
        raise FlashError("cancelled; nothing was changed")


def _waited(count: int, timeout: float | None) -> Iterator[Target]:
    note(f"waiting for {count} new cards or boards (Ctrl-C to stop)...")
    arriving = new_devices(default_predicate, timeout=timeout)
    for n in range(1, count + 1):
        device = next(arriving)
        note(f"  {device.describe()} appeared")
        yield Target(device.node, n)


def _usb_booted(req: Request, count: int) -> Iterator[Target]:
    from fleet.flash import rpiboot_many  # pyusb only for boards in boot-ROM mode

    yield from rpiboot_many.booted_targets(
        req.rpiboot_files, count, timeout=req.timeout or 60.0, log=note
    )


# -------------------------------------------------------------------------- run


def flash_many(
    req: Request,
    plan: Plan,
    pattern: str | None,
    check_settings: bool,
    json_out: bool,
) -> None:
    if req.count is not None:
        _confirm_waiting(req.count, plan.image, req.yes)
        if check_settings:  # every value checked before the first card comes
            for n in range(1, req.count + 1):
                plan.settings_for(
                    Target("", n, "0" * 16 if pattern and "{serial" in pattern else "")
                )
        targets: Iterator[Target] = (
            _usb_booted(req, req.count) if req.rpiboot else _waited(req.count, req.timeout)
        )
        known: dict[str, BlockDevice] = {}
    else:
        devices = _listed(req)
        for target in numbered(d.node for d in devices):
            plan.settings_for(target)  # a bad setting stops the run before any write
        _confirm(devices, plan.image, req.yes or False)
        known = {d.node: d for d in devices}
        targets = numbered(d.node for d in devices)
    with bytes_progress() as progress:

        def one(target: Target, cancel: threading.Event) -> Outcome:
            return flash_target(
                plan, target, _phases(progress, target), cancel, known.get(target.node)
            )

        run = run_all(targets, one)
    _report(run, req.count, json_out)


def _phases(progress: BytesProgress, target: Target) -> PhaseHook:
    def phase(name: str, total: int | None) -> Callable[[int], None]:
        task = progress.add_task(f"{Path(target.node).name} {name}", total=total)
        return lambda n: progress.advance(task, n)

    return phase


def _report(run: Run, count: int | None, json_out: bool) -> None:
    failed = [o for o in run.outcomes if not o.ok]
    if json_out:
        print_json(
            {
                "ok": run.ok,
                "targets": [o.as_dict() for o in run.outcomes],
                "stopped": run.stopped,
                "interrupted": run.interrupted,
            }
        )
    else:
        _table(run.outcomes)
    if run.interrupted:
        raise FlashError(
            f"interrupted; {len(failed)} of {len(run.outcomes)} targets were not finished"
        )
    if failed:
        names = ", ".join(o.node for o in failed)
        raise FlashError(f"{len(failed)} of {len(run.outcomes)} targets failed: {names}")
    if run.stopped:
        raise FlashError(f"only {len(run.outcomes)} of {count} targets came: {run.stopped}")


def _table(outcomes: list[Outcome]) -> None:
    out.print(
        f"{'target':<14} {'serial':<18} {'hostname':<20} {'bytes':>10} {'seconds':>8}  result"
    )
    for o in outcomes:
        result = (
            ("verified" if o.verified else "written, not verified")
            if o.ok
            else f"FAILED: {o.error}"
        )
        size = human_size(o.bytes_written) if o.bytes_written else "-"
        out.print(
            f"{o.node:<14} {o.serial or '-':<18} {o.hostname or '-':<20} "
            f"{size:>10} {o.seconds:>8.1f}  {result}"
        )
