"""What boards report back (reports/BOARD.json in the store) and the wave watch of
``fleet publish --watch``. A report is the board's word, untrusted: read with a size
bound, every field checked, and one whose ``board`` is not its object's name is set aside
as malformed, never counted."""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from fleet.pull.phasing import in_wave
from fleet.pull.publish import REPORT_MAX, report_name
from fleet.pull.store import Store, StoreError
from fleet.update.waves import Budget

RESULTS = ("updated", "rolled-back", "refused")
FAILED = ("rolled-back", "refused")
METHODS = ("delta", "full", "mixed")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_TEXT_MAX = 512


@dataclass(frozen=True)
class Report:
    board: str
    group: str | None = None
    profile: str | None = None
    release: int | None = None
    version: str | None = None
    slot: str | None = None
    result: str | None = None
    target_release: int | None = None
    reason: str | None = None
    host_key_sha256: str | None = None
    time: int | None = None
    method: str | None = None  # how the payloads came: delta, full or mixed
    fetched: int | None = None  # payload bytes the board fetched for its target
    problem: str | None = None  # set when the report could not be read

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _opt(doc: dict[str, Any], key: str, kind: type) -> Any:
    value = doc.get(key)
    if value is None:
        return None
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValueError(f"field {key!r} is not a {kind.__name__}")
    if isinstance(value, str):
        return value[:_TEXT_MAX]
    return value


def parse_report(board: str, data: bytes) -> Report:
    try:
        if len(data) > REPORT_MAX:
            raise ValueError(f"larger than {REPORT_MAX} bytes")
        doc = json.loads(data.decode("utf-8"))
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        if doc.get("board") != board:
            raise ValueError(f"names board {str(doc.get('board'))[:64]!r}, not its own")
        result = _opt(doc, "result", str)
        if result is not None and result not in RESULTS:
            raise ValueError(f"result {result[:32]!r} is not one of {', '.join(RESULTS)}")
        slot = _opt(doc, "slot", str)
        method = _opt(doc, "method", str)
        if method is not None and method not in METHODS:
            raise ValueError(f"method {method[:32]!r} is not one of {', '.join(METHODS)}")
        return Report(
            board=board,
            group=_opt(doc, "group", str),
            profile=_opt(doc, "profile", str),
            release=_opt(doc, "release", int),
            version=_opt(doc, "version", str),
            slot=slot if slot in ("A", "B") else None,
            result=result,
            target_release=_opt(doc, "target_release", int),
            reason=_opt(doc, "reason", str),
            host_key_sha256=_opt(doc, "host_key_sha256", str),
            time=_opt(doc, "time", int),
            method=method,
            fetched=_opt(doc, "fetched", int),
        )
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        return Report(board=board, problem=f"malformed report: {exc}")


def read_reports(store: Store, boards: Iterable[str] | None = None) -> list[Report]:
    """Every board's last report (those of ``boards`` only, when given)."""
    if boards is None:
        names = [
            n.removeprefix("reports/").removesuffix(".json")
            for n in store.list("reports")
            if n.endswith(".json")
        ]
    else:
        names = list(boards)
    found = []
    for board in names:
        if not _NAME.match(board):
            continue
        try:
            data = store.get(report_name(board), REPORT_MAX)
        except StoreError as exc:
            found.append(Report(board=board, problem=str(exc)))
            continue
        if data is not None:
            found.append(parse_report(board, data))
    return found


def tally(reports: Sequence[Report]) -> dict[str, dict[str, int]]:
    """Counts of results per group."""
    groups: dict[str, Counter[str]] = {}
    for report in reports:
        key = report.group or "(unknown)"
        result = report.result or ("malformed" if report.problem else "none")
        groups.setdefault(key, Counter())[result] += 1
    return {g: dict(sorted(c.items())) for g, c in sorted(groups.items())}


@dataclass(frozen=True)
class WaveResult:
    percent: int
    wave: tuple[str, ...]  # the boards whose turn it is, from the inventory
    updated: tuple[str, ...]
    failed: tuple[str, ...]
    silent: tuple[str, ...]  # no report for this release before the wave time ran out
    budget_spent: bool

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def watch_wave(
    store: Store,
    boards: Sequence[str],
    release: int,
    percent: int,
    budget: Budget,
    wave_time_s: float,
    poll_s: float = 2.0,
    say: Callable[[str], None] = lambda _: None,
    clock: Callable[[], float] = time.monotonic,
) -> WaveResult:
    """Wait until every board of this wave has reported on ``release`` (or the wave time
    is up), halting at once when the failure budget is spent. A wave holds the boards of
    every earlier one (phasing only adds boards as the percentage rises), so its counts
    are the whole staged publish's, as the budget is."""
    wave = tuple(b for b in boards if in_wave(b, release, percent))
    deadline = clock() + wave_time_s
    while True:
        reports = {r.board: r for r in read_reports(store, wave)}
        updated, failed = [], []
        for board in wave:
            report = reports.get(board)
            if report is None or report.target_release != release:
                continue
            if report.result == "updated":
                updated.append(board)
            elif report.result in FAILED:
                failed.append(board)
        silent = tuple(b for b in wave if b not in updated and b not in failed)
        spent = budget.spent(len(failed), len(failed) + len(updated))
        if spent or not silent or clock() >= deadline:
            return WaveResult(percent, wave, tuple(updated), tuple(failed), silent, spent)
        say(f"{percent}%: {len(updated)} updated, {len(failed)} failed, {len(silent)} to report")
        time.sleep(poll_s)
