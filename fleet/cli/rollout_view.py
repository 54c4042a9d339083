"""What a person watching a rollout sees: on a terminal, a live view (rich) of the waves,
the boards in flight and the counts, bytes and ETA; elsewhere (CI logs, pipes), one plain
line per event on stderr. Both are a ``fleet.update.rollout.Listener``."""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from typing import TYPE_CHECKING, Any

from fleet.cli.output import err
from fleet.update.rollout import BoardOutcome

if TYPE_CHECKING:
    from rich.console import RenderableType
    from rich.live import Live

SHOWN_IN_FLIGHT = 15  # rows of boards in flight; the rest are counted
SHOWN_DONE = 6


class PlainView:
    """One line per event: a board's outcome, a rollout state change, a retry."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def _say(self, text: str) -> None:
        with self._lock:
            err.print(text, markup=False)

    def rollout(self, state: str, message: str) -> None:
        self._say(f"rollout: {message}")

    def planned(self, waves: list[list[str]], done: dict[str, str]) -> None:
        sizes = ", ".join(str(len(w)) for w in waves)
        left = sum(len(w) for w in waves) - len(done)
        self._say(f"rollout: {len(waves)} wave(s) of {sizes} board(s); {left} to go")

    def board_step(self, board: str, step: str) -> None:
        if step.startswith("retry"):
            self._say(f"{board}: {step}")

    def board_bytes(self, board: str, payload: str, sent: int, size: int) -> None:
        pass

    def board_done(self, outcome: BoardOutcome) -> None:
        why = f": {outcome.reason}" if outcome.reason else ""
        sent = f", {outcome.bytes_sent} bytes" if outcome.bytes_sent else ""
        how = f" as {outcome.method}" if outcome.method else ""
        self._say(f"{outcome.name}: {outcome.outcome}{why} ({outcome.seconds:.1f} s{sent}{how})")

    def __enter__(self) -> PlainView:
        return self

    def __exit__(self, *_: object) -> None:
        pass


class LiveView(PlainView):
    """A table redrawn a few times a second while boards update."""

    def __init__(self, parallel: int) -> None:
        super().__init__()
        self.parallel = parallel
        self.state = "running"
        self.message = ""
        self.waves: list[list[str]] = []
        self.wave_of: dict[str, int] = {}
        self.outcomes: dict[str, str] = {}
        self.flying: dict[str, str] = {}
        self.payload_bytes: dict[str, dict[str, tuple[int, int]]] = {}
        self.sent = 0
        self.recent: deque[BoardOutcome] = deque(maxlen=SHOWN_DONE)
        self.durations: list[float] = []
        self.started = time.monotonic()
        self._live: Live | None = None

    def __enter__(self) -> LiveView:
        from rich.live import Live

        self._live = Live(get_renderable=self._render, console=err.rich, refresh_per_second=4)
        self._live.start()
        return self

    def __exit__(self, *_: object) -> None:
        if self._live is not None:
            self._live.stop()

    def rollout(self, state: str, message: str) -> None:
        with self._lock:
            self.state, self.message = state, message

    def planned(self, waves: list[list[str]], done: dict[str, str]) -> None:
        with self._lock:
            self.waves = waves
            self.wave_of = {n: i + 1 for i, w in enumerate(waves) for n in w}
            self.outcomes.update(done)

    def board_step(self, board: str, step: str) -> None:
        with self._lock:
            self.flying[board] = step

    def board_bytes(self, board: str, payload: str, sent: int, size: int) -> None:
        with self._lock:
            mine = self.payload_bytes.setdefault(board, {})
            before = mine.get(payload, (0, size))[0]
            self.sent += max(0, sent - before)
            mine[payload] = (sent, size)

    def board_done(self, outcome: BoardOutcome) -> None:
        with self._lock:
            self.flying.pop(outcome.name, None)
            self.payload_bytes.pop(outcome.name, None)
            self.outcomes[outcome.name] = outcome.outcome
            self.recent.append(outcome)
            self.durations.append(outcome.seconds)

    def _eta(self, left: int) -> str:
        if not self.durations or left == 0:
            return "-"
        mean = sum(self.durations) / len(self.durations)
        seconds = mean * left / max(1, min(self.parallel, left))
        return f"{seconds:.0f} s"

    def _render(self) -> RenderableType:
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        with self._lock:
            total = sum(len(w) for w in self.waves)
            counts = Counter(self.outcomes.values())
            done = len(self.outcomes)
            elapsed = time.monotonic() - self.started
            rate = self.sent / elapsed if elapsed > 0 else 0.0
            head = Text(
                f"rollout {self.state}: {done}/{total} done, {len(self.flying)} in flight; "
                + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
                + f"; {self.sent / 1e6:.1f} MB sent, {rate / 1e6:.2f} MB/s; "
                f"ETA {self._eta(total - done)}"
            )
            parts: list[Any] = [head]
            if self.message:
                parts.append(Text(self.message, style="bold"))
            waves = Text(
                "  ".join(
                    f"wave {i + 1}: {sum(1 for n in w if n in self.outcomes)}/{len(w)}"
                    for i, w in enumerate(self.waves)
                )
            )
            parts.append(waves)
            table = Table(box=None, pad_edge=False, show_edge=False)
            for column in ("board", "wave", "step", "bytes"):
                table.add_column(column)
            for name, step in list(self.flying.items())[:SHOWN_IN_FLIGHT]:
                sent = sum(s for s, _ in self.payload_bytes.get(name, {}).values())
                size = sum(t for _, t in self.payload_bytes.get(name, {}).values())
                share = f"{sent * 100 // size}% of {size / 1e6:.1f} MB" if size else ""
                table.add_row(Text(name), str(self.wave_of.get(name, "")), Text(step), Text(share))
            hidden = len(self.flying) - SHOWN_IN_FLIGHT
            parts.append(table)
            if hidden > 0:
                parts.append(Text(f"... and {hidden} more in flight"))
            for outcome in self.recent:
                why = f": {outcome.reason}" if outcome.reason else ""
                parts.append(Text(f"  {outcome.name}: {outcome.outcome}{why}"))
        return Group(*parts)


def view(parallel: int) -> PlainView:
    return LiveView(parallel) if err.is_terminal else PlainView()
