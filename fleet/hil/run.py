"""``fleet hil run``: a suite on a lab's boards, a pytest process per board in parallel,
under the run's locks; every board's console and agent logs and its JUnit file in one
result folder, and one JUnit file for all."""

from __future__ import annotations

import concurrent.futures as cf
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from fleet.errors import UsageError
from fleet.hil import junit, locks
from fleet.hil.labfile import Lab

Note = Callable[[str], None]
RUN_PID = "FLEET_HIL_RUN_PID"  # tells a board's pytest which process runs it (fleet.hil.plugin)


@dataclass(frozen=True)
class RunOptions:
    release: Path | None = None
    next_release: Path | None = None
    trust: Path | None = None
    junit: Path | None = None
    parallel: int = 2
    results: Path | None = None
    wait: float = 0.0  # seconds to wait for boards another run holds
    extra: tuple[str, ...] = ()  # passed to pytest as they are (e.g. --cycles 20)
    identity: Path | None = None
    trust_new_host: bool = False


@dataclass(frozen=True)
class BoardRun:
    board: str
    exit_code: int
    seconds: float
    counts: junit.Counts
    folder: Path
    bad: str  # why the board was marked bad for the run ("" if it was not)


@dataclass(frozen=True)
class RunReport:
    suite: Path
    results: Path
    junit: Path
    boards: list[BoardRun]

    @property
    def ok(self) -> bool:
        return all(b.counts.failed == 0 and b.counts.errors == 0 and not b.bad for b in self.boards)


def _pytest_argv(suite: Path, lab: Lab, board: str, folder: Path, options: RunOptions) -> list[str]:
    argv = [
        sys.executable,
        "-m",
        "pytest",
        str(suite),
        "--lab",
        str(lab.path),
        "--board",
        board,
        "--hil-locked",
        "--hil-results",
        str(folder.parent),
        "--junitxml",
        str(folder / "junit.xml"),
        # Not the project's pytest settings, whatever folder this runs in: the suite's own.
        "-c",
        os.devnull,
        "--rootdir",
        str(suite if suite.is_dir() else suite.parent),
        "-p",
        "no:cacheprovider",
        "-q",
        "-rs",
        "-o",
        "junit_family=legacy",  # keeps record_property's figures (boot times, cut offsets)
    ]
    for flag, value in (
        ("--release", options.release),
        ("--next-release", options.next_release),
        ("--trust", options.trust),
    ):
        if value is not None:
            argv += [flag, str(value)]
    if options.identity is not None:
        argv += ["--identity", str(options.identity)]
    if options.trust_new_host:
        argv.append("--trust-new-host")
    return [*argv, *options.extra]


def _one(suite: Path, lab: Lab, board: str, results: Path, options: RunOptions) -> BoardRun:
    folder = results / board
    folder.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with (folder / "pytest.log").open("wb") as log:
        code = subprocess.run(
            _pytest_argv(suite, lab, board, folder, options),
            stdout=log,
            stderr=subprocess.STDOUT,
            check=False,
            env={**os.environ, RUN_PID: str(os.getpid())},
        ).returncode
    bad_file = folder / "bad"
    bad = bad_file.read_text().strip() if bad_file.exists() else ""
    return BoardRun(board, code, time.monotonic() - started, junit.Counts(), folder, bad)


def run(
    suite: Path, lab: Lab, boards: Sequence[str], options: RunOptions, note: Note = lambda _: None
) -> RunReport:
    if not suite.exists():
        raise UsageError(f"{suite}: no such suite (a folder or file of pytest tests)")
    if options.parallel < 1:
        raise UsageError("--parallel must be at least 1")
    names = list(boards) or [b.name for b in lab.boards]
    for name in names:
        lab.board(name)  # an unknown name is an error before anything is taken
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results = (options.results or Path("hil-results") / f"{lab.name}-{stamp}").absolute()
    results.mkdir(parents=True, exist_ok=True)
    held = locks.acquire_many(lab, names, wait=options.wait)
    try:
        note(f"hil: {len(names)} board(s) of lab {lab.name} taken: {', '.join(names)}")
        with cf.ThreadPoolExecutor(options.parallel) as pool:
            futures = {n: pool.submit(_one, suite, lab, n, results, options) for n in names}
            runs = {}
            for name, future in futures.items():
                runs[name] = future.result()
                note(
                    f"hil: {name}: pytest exit {runs[name].exit_code} in {runs[name].seconds:.0f} s"
                )
    finally:
        for lock in held:
            lock.release()
    out = options.junit or results / "junit.xml"
    parts = {
        n: (r.folder / "junit.xml", f"pytest exit {r.exit_code}; see {r.folder}/pytest.log")
        for n, r in runs.items()
    }
    counted = junit.merge(parts, out.absolute())
    boards_run = [
        BoardRun(r.board, r.exit_code, r.seconds, counted[r.board], r.folder, r.bad)
        for r in runs.values()
    ]
    return RunReport(suite, results, out.absolute(), boards_run)
