"""Shared output helpers: results on stdout (plain or ``--json``), progress and notes on
stderr so that a script reading stdout sees only the result.

Everything printed is plain text: markup and emoji codes are off for the whole console,
because most of what fleet prints holds outside text (USB descriptor strings, mount
points, file names, what a board answered), and one ``[/]`` in a model string would
crash rich or restyle a warning. Style is given as ``style=``, never inside the text.

rich is imported on first use, not at start-up: it is about fifty modules, which a cold
``fleet flash --json`` run (page cache empty, as on a freshly booted laptop) would pay
for on every call without ever drawing anything."""

from __future__ import annotations

import json
import sys
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

JSON_HELP = "Print the result as JSON on stdout (for scripts)."
FULL_HELP = "Send every payload whole, never a delta against the board's running slot."


class LazyConsole:
    """A rich Console made when something is first printed."""

    def __init__(self, stderr: bool) -> None:
        self._stderr = stderr
        self._console: Console | None = None

    @property
    def rich(self) -> Console:
        if self._console is None:
            from rich.console import Console

            self._console = Console(
                stderr=self._stderr, highlight=False, soft_wrap=True, markup=False, emoji=False
            )
        return self._console

    @property
    def is_terminal(self) -> bool:
        return self.rich.is_terminal

    def print(self, *objects: Any, **kwargs: Any) -> None:
        self.rich.print(*objects, **kwargs)


out = LazyConsole(stderr=False)
err = LazyConsole(stderr=True)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
    sys.stdout.flush()


def note(message: str) -> None:
    err.print(message)


def warn(message: str) -> None:
    """A note that must stand out (a system drive about to be overwritten)."""
    err.print(message, style="bold red")


def steps_progress() -> Progress:
    """A progress display for a sequence of named steps (build stages, boot waits)."""
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}", style="bold", markup=False),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=err.rich,
        transient=False,
        disable=not err.is_terminal,
    )


class BytesProgress:
    """Progress for byte streams (bytes, rate, time left) on a terminal; when stderr is
    not a terminal it draws nothing and rich is never imported."""

    def __init__(self) -> None:
        self._progress: Progress | None = None
        if sys.stderr.isatty():
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description}", style="bold", markup=False),
                BarColumn(),
                DownloadColumn(binary_units=True),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=err.rich,
            )

    def __enter__(self) -> BytesProgress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    def add_task(self, description: str, total: int | None) -> int:
        if self._progress is None:
            return 0
        return int(self._progress.add_task(description, total=total))

    def advance(self, task: int, amount: int) -> None:
        if self._progress is not None:
            self._progress.advance(_task_id(task), amount)

    def update(self, task: int, completed: int) -> None:
        if self._progress is not None:
            self._progress.update(_task_id(task), completed=completed)


def _task_id(task: int) -> TaskID:
    return cast("TaskID", task)  # rich's TaskID is a NewType of int


def bytes_progress() -> BytesProgress:
    """A progress display for byte streams: bytes, rate and time left."""
    return BytesProgress()
