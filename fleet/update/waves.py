"""A rollout's plan and its failure budget: pure rules, no I/O (docs/rollouts.md).

Waves follow Ansible's ``serial`` list: each step is a count or a percentage, the last step
repeats until every board has had its turn. Unlike Ansible, a percentage is of the boards
still to go (the issue's rule: "10%" after a canary of 1 means a tenth of the rest), rounded
down as Ansible rounds, and never less than one board.

The budget is for the whole rollout, not per wave (Ansible's per-batch
``max_fail_percentage`` lets a fleet fail 10% in every batch). A count N tolerates N
failed boards; the N+1st halts. A percentage P is judged, as AWS IoT's abort criteria are,
only once ``min_finished`` boards have finished: the rollout halts when more than P% of
the finished boards failed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from fleet.errors import UsageError

_STEP = re.compile(r"^\s*(?P<n>[0-9]+(?:\.[0-9]+)?)\s*(?P<pct>%?)\s*$")
MAX_STEPS = 100


@dataclass(frozen=True)
class Step:
    value: float
    percent: bool

    def size(self, remaining: int) -> int:
        if self.percent:
            return max(1, min(remaining, math.floor(remaining * self.value / 100)))
        return max(1, min(remaining, int(self.value)))

    def __str__(self) -> str:
        if self.percent:
            return f"{self.value:g}%"
        return str(int(self.value))


def parse_waves(text: str) -> tuple[Step, ...]:
    """``1,10%,50%,100%`` -> steps. Counts are whole and at least 1; percentages are
    above 0 and at most 100."""
    parts = text.split(",")
    if not text.strip() or len(parts) > MAX_STEPS:
        raise UsageError(f"--waves {text!r}: give 1 to {MAX_STEPS} steps, e.g. 1,10%,50%,100%")
    steps = []
    for part in parts:
        match = _STEP.match(part)
        if not match:
            raise UsageError(f"--waves: {part.strip()!r} is not a count or a percentage")
        value = float(match["n"])
        if match["pct"]:
            if not 0 < value <= 100:
                raise UsageError(f"--waves: {part.strip()} is not a percentage above 0 up to 100")
        elif value < 1 or value != int(value):
            raise UsageError(f"--waves: {part.strip()} is not a whole count of at least 1")
        steps.append(Step(value, bool(match["pct"])))
    return tuple(steps)


def plan(boards: Sequence[str], steps: Sequence[Step]) -> list[list[str]]:
    """The boards in waves, in the order given (canaries first is the caller's order)."""
    if not steps:
        raise UsageError("a rollout needs at least one wave step")
    waves: list[list[str]] = []
    at = 0
    index = 0
    while at < len(boards):
        step = steps[min(index, len(steps) - 1)]
        size = step.size(len(boards) - at)
        waves.append(list(boards[at : at + size]))
        at += size
        index += 1
    return waves


def canaries_first(boards: Sequence[str], canaries: set[str]) -> list[str]:
    """Canary boards lead, each side keeping its own order."""
    return [b for b in boards if b in canaries] + [b for b in boards if b not in canaries]


@dataclass(frozen=True)
class Budget:
    """``--max-failures``: ``count`` failures tolerated, or ``percent`` of finished boards
    once ``min_finished`` have finished."""

    count: int | None = 0
    percent: float | None = None
    min_finished: int = 1

    @classmethod
    def parse(cls, text: str, min_finished: int) -> Budget:
        raw = text.strip()
        if raw.endswith("%"):
            try:
                pct = float(raw[:-1])
            except ValueError:
                pct = -1.0
            if not 0 <= pct <= 100:
                raise UsageError(f"--max-failures {text!r}: a percentage from 0% to 100%")
            return cls(None, pct, max(1, min_finished))
        if not raw.isdigit():
            raise UsageError(f"--max-failures {text!r}: a number of boards or a percentage")
        return cls(int(raw), None, max(1, min_finished))

    def spent(self, failed: int, finished: int) -> bool:
        if self.count is not None:
            return failed > self.count
        assert self.percent is not None
        if finished < self.min_finished:
            return False
        return failed * 100 > self.percent * finished

    def __str__(self) -> str:
        if self.count is not None:
            return f"{self.count} board(s)"
        return f"{self.percent:g}% of finished boards (judged after {self.min_finished})"
