"""``fleet hil``: hardware-in-the-loop suites on a lab's boards, and who holds which board."""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from fleet.cli.output import JSON_HELP, note, out, print_json
from fleet.hil import locks
from fleet.hil.labfile import load_lab
from fleet.hil.run import RunOptions, run

app = typer.Typer(
    help=(
        "Hardware-in-the-loop test runs. A lab file (hardware-in-loop/labs/*.toml) lists "
        "boards, what each has (serial port, USB hub port, GPIO line, PDU outlet, address) "
        "and how it is driven; `fleet hil run SUITE --lab LAB --release R` takes the boards, "
        "provisions each with R and runs the pytest suite on each in parallel "
        "(docs/hil.md)."
    ),
    no_args_is_help=True,
)

LabOpt = Annotated[Path, typer.Option("--lab", "-l", help="The lab description (a .toml).")]


@app.command("run")
def run_cmd(
    suite: Annotated[Path, typer.Argument(help="A pytest suite: hardware-in-loop/suites/NAME.")],
    lab: LabOpt,
    release: Annotated[
        Path | None, typer.Option("--release", "-r", help="Release folder put on each board.")
    ] = None,
    next_release: Annotated[
        Path | None,
        typer.Option("--next-release", help="A later release the update suites update to."),
    ] = None,
    trust: Annotated[
        Path | None, typer.Option("--trust", help="Keys the releases must be signed by.")
    ] = None,
    board: Annotated[
        list[str] | None, typer.Option("--board", "-b", help="Only this board (repeat it).")
    ] = None,
    junit_file: Annotated[
        Path | None, typer.Option("--junit", help="Write the JUnit XML here too.")
    ] = None,
    parallel: Annotated[
        int, typer.Option("--parallel", "-p", min=1, max=64, help="Boards tested at once.")
    ] = 2,
    results: Annotated[
        Path | None, typer.Option("--results", help="Result folder (default hil-results/LAB-TIME).")
    ] = None,
    wait: Annotated[
        float, typer.Option("--wait", min=0, help="Seconds to wait for boards another run holds.")
    ] = 0.0,
    cycles: Annotated[
        int | None, typer.Option("--cycles", min=1, help="Soak suite: update/rollback cycles.")
    ] = None,
    identity: Annotated[
        Path | None, typer.Option("--identity", "-i", help="SSH key for boards on the network.")
    ] = None,
    trust_new_host: Annotated[
        bool, typer.Option("--trust-new-host", help="Pin host keys of boards not yet known.")
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Run SUITE on the lab's boards (or those given with --board).

    Each board is locked for the run (a lock that goes with the process: a killed run
    leaves none), provisioned with --release by its provision driver and checked to run it
    healthy; a board that fails that is marked bad and its tests are skipped with the
    reason. Every board's console log, agent log and pytest output go to the result
    folder; --junit gets one test case per board and test.

    Exit codes: 0 all passed, 1 a test failed or a board went bad, 2 bad usage.

    Example: fleet hil run hardware-in-loop/suites/smoke --lab hardware-in-loop/labs/virtual.toml
    --release out/release --trust keys/release.pub --junit out.xml
    """
    parsed = load_lab(lab)
    extra = ("--cycles", str(cycles)) if cycles is not None else ()
    options = RunOptions(
        release,
        next_release,
        trust,
        junit_file,
        parallel,
        results,
        wait,
        extra,
        identity,
        trust_new_host,
    )
    report = run(suite, parsed, board or [], options, note)
    if json_out:
        print_json(
            {
                "suite": str(report.suite),
                "results": str(report.results),
                "junit": str(report.junit),
                "ok": report.ok,
                "boards": [
                    {
                        **asdict(b.counts),
                        "board": b.board,
                        "exit_code": b.exit_code,
                        "seconds": round(b.seconds, 1),
                        "bad": b.bad,
                        "folder": str(b.folder),
                    }
                    for b in report.boards
                ],
            }
        )
    else:
        for b in report.boards:
            c = b.counts
            line = (
                f"{b.board}: {c.passed} passed, {c.failed} failed, {c.errors} errors, "
                f"{c.skipped} skipped in {b.seconds:.0f} s"
            )
            out.print(line + (f"; bad: {b.bad}" if b.bad else ""), markup=False)
        out.print(f"results in {report.results}; JUnit {report.junit}", markup=False)
    sys.exit(0 if report.ok else 1)


@app.command("boards")
def boards_cmd(
    lab: LabOpt, json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False
) -> None:
    """The lab's boards, and which run holds each (pid, user, host, command, since)."""
    parsed = load_lab(lab)
    held = locks.holders(parsed)
    rows = []
    for b in parsed.boards:
        holder = held.get(b.name)
        rows.append(
            {
                "board": b.name,
                "profile": b.profile,
                "features": list(b.features),
                "power": b.drivers.power,
                "console": b.drivers.console,
                "provision": b.drivers.provision,
                "held_by": asdict(holder) if holder is not None else None,
            }
        )
    if json_out:
        print_json(rows)
        return
    for b in parsed.boards:
        holder = held.get(b.name)
        who = f"held by {holder}" if holder is not None else "free"
        out.print(f"{b.name:<16} {b.profile:<18} {who}", markup=False)
