"""``fleet rollout``: one release to many boards in waves, with a fleet-wide failure
budget, pause/continue/abort from another terminal, and a journal to resume from
(docs/rollouts.md)."""

from __future__ import annotations

import logging
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from fleet import inventory as inv
from fleet import trust as trustlib
from fleet.cli.output import FULL_HELP, JSON_HELP, out, print_json
from fleet.cli.rollout_view import view
from fleet.errors import UsageError
from fleet.update import journal as j
from fleet.update import rollout as ro
from fleet.update.target import from_host

_VERBS = ("start", "pause", "continue", "abort", "history")


class _StartByDefault(TyperGroup):
    """``fleet rollout RELEASE ...`` and ``fleet rollout --resume`` mean ``start``; the
    verbs (pause, continue, abort, history) are subcommands."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:  # typer's own click
        if args and args[0] not in _VERBS and args[0] not in ("--help", "-h"):
            args = ["start", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(
    cls=_StartByDefault,
    no_args_is_help=True,
    help=(
        "Roll a release out to the boards of an inventory in waves: "
        "`fleet rollout out/release --inventory fleet.toml --trust keys/release.pub`. "
        "From another terminal: `fleet rollout pause|continue|abort --inventory fleet.toml`; "
        "after a crash: `fleet rollout --resume --inventory fleet.toml --trust ...`; "
        "what happened: `fleet rollout history --inventory fleet.toml`."
    ),
)

InventoryOpt = Annotated[
    Path | None,
    typer.Option(
        "--inventory",
        "-I",
        help="fleet's inventory.toml or an Ansible inventory (INI or YAML).",
    ),
]
JournalOpt = Annotated[
    Path | None,
    typer.Option(
        "--journal",
        help="The rollout journal (SQLite; default: INVENTORY's name + .rollouts.sqlite, "
        "beside it).",
    ),
]


def _journal_path(inventory: Path | None, journal: Path | None) -> Path:
    if journal is not None:
        return journal
    if inventory is None:
        raise UsageError("give --inventory (the journal lives beside it) or --journal")
    return j.default_path(inventory)


def _open(inventory: Path | None, journal: Path | None, must_exist: bool) -> j.SqliteJournal:
    path = _journal_path(inventory, journal)
    if must_exist and not path.exists():
        raise UsageError(f"no rollout journal at {path}: no rollout has run from there")
    return j.SqliteJournal(path)


def _boards(
    inventory: Path,
    group: str | None,
    trust_new_host: bool,
    connect_timeout: float,
    identity: Path | None,
) -> list[ro.Board]:
    fleet_inventory = inv.load(inventory)
    return [
        ro.Board(
            h.name,
            from_host(h, identity, trust_new_host, connect_timeout),
            h.profile,
            h.groups,
        )
        for h in fleet_inventory.select(group)
    ]


def _quiet_paramiko() -> None:
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        # Rebooting boards refuse connections for a while; paramiko would print each.
        logging.getLogger("paramiko").setLevel(logging.CRITICAL)


@app.command()
def start(
    release: Annotated[
        Path | None, typer.Argument(help="Release folder (from fleet build); not with --resume.")
    ] = None,
    inventory: InventoryOpt = None,
    trust: Annotated[
        Path | None,
        typer.Option("--trust", help="Keys the release must be signed by (folder or .pub)."),
    ] = None,
    group: Annotated[
        str | None, typer.Option("--group", "-g", help="Only the boards of this group.")
    ] = None,
    waves: Annotated[
        str,
        typer.Option(
            "--waves",
            help="Wave sizes like Ansible's serial: counts or percentages of the boards still "
            "to go; the last one repeats.",
        ),
    ] = "1,10%,50%,100%",
    parallel: Annotated[
        int, typer.Option("--parallel", "-p", min=1, max=1000, help="Boards updated at once.")
    ] = 10,
    max_failures: Annotated[
        str,
        typer.Option(
            "--max-failures",
            help="Failures the whole rollout tolerates: N boards, or P% of finished boards "
            "(judged once --min-finished have finished). One more halts it.",
        ),
    ] = "0",
    min_finished: Annotated[
        int,
        typer.Option("--min-finished", min=1, help="Finished boards before a P% budget counts."),
    ] = 1,
    pause_between: Annotated[
        bool,
        typer.Option("--pause-between", help="After each wave, wait for `fleet rollout continue`."),
    ] = False,
    health_timeout: Annotated[
        float | None,
        typer.Option(
            "--health-timeout",
            min=1,
            help="Seconds a board may take to commit after its trial reboot "
            "(default: the release's health deadline + 120).",
        ),
    ] = None,
    retries: Annotated[
        int,
        typer.Option("--retries", min=0, max=20, help="Tries again for unreachable boards."),
    ] = 2,
    backoff: Annotated[
        float,
        typer.Option("--backoff", min=0, help="Seconds before the first retry; doubles each time."),
    ] = 5.0,
    attempts: Annotated[
        int, typer.Option("--attempts", min=1, max=9, help="Boot attempts for the new slot.")
    ] = 1,
    canary_group: Annotated[
        str, typer.Option("--canary-group", help="Boards of this group go first.")
    ] = "canary",
    resume: Annotated[
        bool,
        typer.Option(
            "--resume", help="Finish the journal's unfinished rollout (after a crash or kill)."
        ),
    ] = False,
    journal: JournalOpt = None,
    identity: Annotated[
        Path | None,
        typer.Option("--identity", "-i", help="SSH key for boards the inventory gives none."),
    ] = None,
    trust_new_host: Annotated[
        bool,
        typer.Option(
            "--trust-new-host", help="Accept and record host keys of boards not yet known."
        ),
    ] = False,
    connect_timeout: Annotated[
        float, typer.Option("--connect-timeout", min=1, help="Seconds for SSH to answer.")
    ] = 10.0,
    full: Annotated[bool, typer.Option("--full", help=FULL_HELP)] = False,
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Update every board of INVENTORY (or of --group) to RELEASE, wave by wave.

    The release is verified once; boards of another profile are refused up front and
    boards already running it are skipped. Each board gets the A/B update of `fleet
    update`. When the failure budget is spent the rollout halts: boards in flight finish,
    no other board is touched. Every step is in the journal before it is taken.

    Exit codes: 0 completed, 13 completed with failures within the budget, 14 halted,
    15 aborted, 130 interrupted (resume with --resume).

    Example: fleet rollout out/release -I fleet.toml --trust keys/release.pub --waves 1,50%
    """
    if inventory is None:
        raise UsageError("give --inventory FILE (fleet's TOML, or an Ansible inventory)")
    if trust is None:
        raise UsageError("give --trust KEYS: the keys the release must be signed by")
    if resume == (release is not None):
        raise UsageError("give a RELEASE folder, or --resume to finish an unfinished rollout")
    settings = ro.Settings(
        waves=waves,
        parallel=parallel,
        max_failures=max_failures,
        min_finished=min_finished,
        pause_between=pause_between,
        health_timeout=health_timeout,
        retries=retries,
        backoff=backoff,
        attempts=attempts,
        canary_group=canary_group,
        deltas=not full,
    )
    settings.check()
    policy = trustlib.load_trust(trust)
    boards = _boards(inventory, group, trust_new_host, connect_timeout, identity)
    book = _open(inventory, journal, must_exist=resume)
    _quiet_paramiko()
    with view(parallel) as listener:
        if resume:
            report = ro.resume(book, policy, boards, listener=listener)
        else:
            assert release is not None
            report = ro.start(
                book,
                release,
                policy,
                boards,
                settings,
                inventory=str(inventory.resolve()),
                group=group or "",
                listener=listener,
            )
    if json_out:
        print_json(report.as_dict())
    else:
        _print_report(report)
    sys.exit(report.exit_code)


def _print_report(report: ro.Report) -> None:
    from rich.table import Table
    from rich.text import Text

    table = Table(title=None, box=None, pad_edge=False)
    for column in ("board", "wave", "outcome", "reason", "slot", "bytes", "method", "seconds"):
        table.add_column(column)
    for b in report.boards:
        table.add_row(
            Text(b.name),
            str(b.wave),
            Text(b.outcome),
            Text(b.reason),
            b.slot,
            str(b.bytes_sent),
            b.method,
            f"{b.seconds:.1f}",
        )
    out.print(table)
    counts = ", ".join(f"{k} {v}" for k, v in sorted(report.counts().items()))
    out.print(
        f"rollout {report.rollout.id} {report.state}: {report.message} ({counts})", markup=False
    )


def _live(book: j.SqliteJournal) -> j.Rollout:
    record = book.latest()
    if record is None or record.state in j.FINAL:
        raise UsageError(f"{book.path}: no rollout is running")
    if not book.controller_alive():
        raise UsageError(
            f"rollout {record.id} has no controller (it was killed?): "
            "fleet rollout --resume finishes it"
        )
    return record


def _request(verb: str, inventory: Path | None, journal: Path | None) -> None:
    book = _open(inventory, journal, must_exist=True)
    record = _live(book)
    book.request(record.id, verb)
    out.print(f"rollout {record.id}: asked to {verb}", markup=False)


@app.command()
def pause(inventory: InventoryOpt = None, journal: JournalOpt = None) -> None:
    """Start no more boards until `fleet rollout continue` (boards in flight finish)."""
    _request(j.PAUSE, inventory, journal)


@app.command("continue")
def continue_(inventory: InventoryOpt = None, journal: JournalOpt = None) -> None:
    """Go on with a paused rollout (or the next wave after --pause-between)."""
    _request(j.CONTINUE, inventory, journal)


@app.command()
def abort(inventory: InventoryOpt = None, journal: JournalOpt = None) -> None:
    """End the rollout: boards in flight finish, no other board is started."""
    _request(j.ABORT, inventory, journal)


def _when(stamp: float | None) -> str:
    if stamp is None:
        return "-"
    return datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


@app.command()
def history(
    rollout_id: Annotated[
        int | None, typer.Argument(help="One rollout: its boards and every step.")
    ] = None,
    inventory: InventoryOpt = None,
    journal: JournalOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """The rollouts of the journal, or one rollout's boards and steps."""
    book = _open(inventory, journal, must_exist=True)
    if rollout_id is None:
        rows: list[dict[str, Any]] = []
        for record in book.history():
            counts = dict(Counter(b.outcome for b in ro.outcomes(book, record.id)))
            rows.append(
                {
                    "rollout": record.id,
                    "state": record.state,
                    "release": record.release_number,
                    "version": record.version,
                    "group": record.group,
                    "created": _when(record.created),
                    "finished": _when(record.finished),
                    "counts": counts,
                }
            )
        if json_out:
            print_json(rows)
            return
        for row in rows:
            counts_text = ", ".join(f"{k} {v}" for k, v in sorted(row["counts"].items()))
            out.print(
                f"{row['rollout']}: {row['state']}, release {row['release']} "
                f"({row['version']}), started {row['created']}: {counts_text}",
                markup=False,
            )
        return
    record = book.get(rollout_id)
    boards = book.boards(record.id)
    steps = book.steps(record.id)
    if json_out:
        print_json(
            {
                "rollout": record.id,
                "state": record.state,
                "release": record.release_number,
                "boards": [b.__dict__ for b in boards],
                "steps": [s.__dict__ for s in steps],
            }
        )
        return
    out.print(
        f"rollout {record.id}: {record.state}, release {record.release_number} "
        f"({record.version}) from {record.release}",
        markup=False,
    )
    for b in boards:
        why = f": {b.reason}" if b.reason else ""
        out.print(
            f"  {b.name} (wave {b.wave}): {b.outcome or ro.NOT_STARTED}{why}; last step "
            f"{b.state}, {b.attempts} attempt(s), {b.bytes_sent} bytes"
            f"{f' ({b.method})' if b.method else ''}",
            markup=False,
        )
    for s in steps:
        info = f" ({s.info})" if s.info else ""
        out.print(f"  {_when(s.at)} {s.board}: {s.step}{info}", markup=False)
