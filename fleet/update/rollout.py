"""One release going to many boards: waves, a fleet-wide failure budget, pause and abort
from another terminal, and a journal that lets a killed controller resume
(docs/rollouts.md).

Each board's update is fleet.update.machine's, unchanged; this module decides which board
goes when, writes every step to the journal before the machine takes it, and stops
starting boards when the budget is spent or someone asks. Boards in flight always finish:
a board is never left halfway by the controller's own choice.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import os
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from fleet.delta import store
from fleet.errors import ReleaseError, UsageError
from fleet.release import load_manifest, manifest_sha256
from fleet.trust import verify_release
from fleet.update import journal as j
from fleet.update import machine
from fleet.update import result as r
from fleet.update.target import Target
from fleet.update.waves import Budget, Step, canaries_first, parse_waves, plan
from signing import TrustSet

NOT_STARTED = "not-started"
FAILED = (r.Outcome.ROLLED_BACK.value, r.Outcome.REFUSED.value, r.Outcome.UNREACHABLE.value)
# Steps before `try`: a board lost there has nothing on trial, and may be tried again.
_BEFORE_TRY = ("connect", "verify", "install-manifest", "install boot", "install rootfs", "retry")
TICK = 0.2  # seconds between looks at requests and finished boards
MAX_BACKOFF = 60.0

EXIT_COMPLETED = 0
EXIT_COMPLETED_WITH_FAILURES = 13
EXIT_HALTED = 14
EXIT_ABORTED = 15
EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class Board:
    name: str
    target: Target
    profile: str | None = None
    groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class Settings:
    waves: str = "1,10%,50%,100%"
    parallel: int = 10
    max_failures: str = "0"
    min_finished: int = 1
    pause_between: bool = False
    health_timeout: float | None = None
    retries: int = 2
    backoff: float = 5.0
    attempts: int = 1
    canary_group: str = "canary"
    deltas: bool = True  # False: --full, every payload sent whole

    def steps(self) -> tuple[Step, ...]:
        return parse_waves(self.waves)

    def budget(self) -> Budget:
        return Budget.parse(self.max_failures, self.min_finished)

    def check(self) -> None:
        self.steps()
        self.budget()
        if self.parallel < 1:
            raise UsageError("--parallel must be at least 1")
        if self.retries < 0:
            raise UsageError("--retries must be 0 or more")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Settings:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


class Listener(Protocol):
    def rollout(self, state: str, message: str) -> None: ...
    def planned(self, waves: list[list[str]], done: dict[str, str]) -> None: ...
    def board_step(self, board: str, step: str) -> None: ...
    def board_bytes(self, board: str, payload: str, sent: int, size: int) -> None: ...
    def board_done(self, outcome: BoardOutcome) -> None: ...


class Quiet:
    def rollout(self, state: str, message: str) -> None:
        pass

    def planned(self, waves: list[list[str]], done: dict[str, str]) -> None:
        pass

    def board_step(self, board: str, step: str) -> None:
        pass

    def board_bytes(self, board: str, payload: str, sent: int, size: int) -> None:
        pass

    def board_done(self, outcome: BoardOutcome) -> None:
        pass


@dataclass(frozen=True)
class BoardOutcome:
    name: str
    wave: int
    outcome: str  # updated, rolled-back, refused, unreachable, skipped, not-started
    reason: str = ""
    detail: str = ""
    slot: str = ""
    bytes_sent: int = 0
    attempts: int = 0
    seconds: float = 0.0
    method: str = ""  # how its payloads went in: delta, full or mixed; "" if none did


@dataclass(frozen=True)
class Report:
    rollout: j.Rollout
    state: str  # completed, halted, aborted, or interrupted (left running for --resume)
    message: str
    boards: list[BoardOutcome] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return dict(Counter(board.outcome for board in self.boards))

    @property
    def exit_code(self) -> int:
        if self.state == j.ABORTED:
            return EXIT_ABORTED
        if self.state == j.HALTED:
            return EXIT_HALTED
        if self.state != j.COMPLETED:
            return EXIT_INTERRUPTED
        if any(b.outcome in FAILED for b in self.boards):
            return EXIT_COMPLETED_WITH_FAILURES
        return EXIT_COMPLETED

    def as_dict(self) -> dict[str, Any]:
        return {
            "rollout": self.rollout.id,
            "release": self.rollout.release_number,
            "version": self.rollout.version,
            "state": self.state,
            "message": self.message,
            "exit_code": self.exit_code,
            "counts": self.counts(),
            "bytes_sent": sum(b.bytes_sent for b in self.boards),
            "boards": [{**asdict(b), "seconds": round(b.seconds, 2)} for b in self.boards],
        }


def outcomes(journal: j.Journal, rollout_id: int) -> list[BoardOutcome]:
    found = []
    for rec in journal.boards(rollout_id):
        seconds = (rec.finished - rec.started) if rec.finished and rec.started else 0.0
        found.append(
            BoardOutcome(
                rec.name,
                rec.wave,
                rec.outcome or NOT_STARTED,
                rec.reason,
                rec.detail,
                rec.slot,
                rec.bytes_sent,
                rec.attempts,
                seconds,
                rec.method,
            )
        )
    return found


def start(
    journal: j.Journal,
    folder: Path,
    trust: TrustSet,
    boards: Sequence[Board],
    settings: Settings,
    *,
    inventory: str = "",
    group: str = "",
    listener: Listener | None = None,
) -> Report:
    """Verify the release once, plan the waves, record the plan, and run it."""
    settings.check()
    listener = listener or Quiet()
    if not boards:
        raise UsageError("no boards to roll out to (check --group and the inventory)")
    with journal.controller():
        # Every payload hashed once, here; each board then checks its profile and floor.
        verify_release(folder, trust)
        manifest = load_manifest(folder)
        refused = {
            b.name: f"the inventory says profile {b.profile!r}; the release is for "
            f"{manifest.board!r}"
            for b in boards
            if b.profile is not None and b.profile != manifest.board
        }
        canaries = {b.name for b in boards if settings.canary_group in b.groups}
        order = canaries_first([b.name for b in boards if b.name not in refused], canaries)
        waves = plan(order, settings.steps()) if order else []
        record = journal.create(
            j.Rollout(
                id=0,
                release=str(folder.resolve()),
                release_number=manifest.release,
                version=manifest.version,
                manifest_sha256=manifest_sha256(folder),
                inventory=inventory,
                group=group,
                options=asdict(settings),
                state=j.RUNNING,
                control="",
                created=time.time(),
                finished=None,
                controller_pid=os.getpid(),
            ),
            # Wave 0 holds the boards refused up front: never contacted, not failures.
            [sorted(refused), *waves],
        )
        for name in sorted(refused):
            journal.finish_board(record.id, name, r.Outcome.REFUSED.value, refused[name], "", "", 0)
        return _Controller(journal, record, folder, boards, settings, listener).run()


def resumable(journal: j.Journal, rollout_id: int | None = None) -> j.Rollout:
    record = journal.get(rollout_id) if rollout_id is not None else journal.latest()
    if record is None:
        raise j.JournalError("the journal holds no rollout to resume")
    if record.state in j.FINAL:
        raise j.JournalError(f"rollout {record.id} has ended ({record.state}); nothing to resume")
    return record


def resume(
    journal: j.Journal,
    trust: TrustSet,
    boards: Sequence[Board],
    *,
    rollout_id: int | None = None,
    listener: Listener | None = None,
) -> Report:
    """Finish a rollout whose controller died: boards that finished stay finished, a
    board caught after its ``try`` is judged by its own boot state, the rest go on."""
    listener = listener or Quiet()
    with journal.controller():
        record = resumable(journal, rollout_id)
        folder = Path(record.release)
        try:
            verify_release(folder, trust)
        except ReleaseError as exc:
            raise ReleaseError(f"cannot resume rollout {record.id}: {exc}") from exc
        if manifest_sha256(folder) != record.manifest_sha256:
            raise ReleaseError(
                f"cannot resume rollout {record.id}: {folder} now holds another manifest "
                "than the one the rollout started with"
            )
        settings = Settings.from_dict(record.options)
        return _Controller(journal, record, folder, boards, settings, listener).run()


class _Controller:
    def __init__(
        self,
        journal: j.Journal,
        record: j.Rollout,
        folder: Path,
        boards: Sequence[Board],
        settings: Settings,
        listener: Listener,
    ) -> None:
        self.journal = journal
        self.record = record
        self.id = record.id
        self.folder = folder
        self.boards = {b.name: b for b in boards}
        self.settings = settings
        self.budget = settings.budget()
        self.listener = listener
        self.failed = 0
        self.finished = 0
        self.halted = ""
        self.aborted = False
        self.paused = record.state == j.PAUSED
        self.last_step: dict[str, str] = {}
        self.tries: dict[str, int] = {}
        if settings.deltas:
            # Kept once here, not per board: the next rollout's deltas are made against it.
            with contextlib.suppress(OSError, store.StoreError):
                store.keep(folder)

    # ---- the plan as the journal has it ----------------------------------------------
    def run(self) -> Report:
        records = self.journal.boards(self.id)
        waves: dict[int, list[str]] = {}
        done: dict[str, str] = {}
        for rec in records:
            waves.setdefault(rec.wave, []).append(rec.name)
            self.last_step[rec.name] = rec.state
            if rec.outcome:
                done[rec.name] = rec.outcome
                if rec.wave > 0:
                    self._count(rec.outcome)
        self.listener.planned([waves[n] for n in sorted(waves) if n > 0], done)
        self.journal.set_state(self.id, j.PAUSED if self.paused else j.RUNNING, os.getpid())
        if self.paused:
            self.listener.rollout(j.PAUSED, "paused: no board starts until fleet rollout continue")
        self._check_budget()
        interrupted = False
        numbers = [n for n in sorted(waves) if n > 0]
        with cf.ThreadPoolExecutor(self.settings.parallel, thread_name_prefix="board") as pool:
            try:
                for index, number in enumerate(numbers):
                    todo = [n for n in waves[number] if n not in done]
                    if not todo:
                        continue
                    if self.halted or self.aborted:
                        break
                    self.listener.rollout(
                        "wave", f"wave {number} of {len(numbers)}: {len(todo)} board(s)"
                    )
                    self._wave(pool, todo)
                    if self.halted or self.aborted:
                        break
                    more = any(n not in done for w in numbers[index + 1 :] for n in waves[w])
                    if self.settings.pause_between and more:
                        self._pause_between(number)
                        if self.aborted:
                            break
            except KeyboardInterrupt:
                interrupted = True
        return self._end(interrupted)

    def _count(self, outcome: str) -> None:
        if outcome == r.Outcome.SKIPPED.value:
            return
        self.finished += 1
        if outcome in FAILED:
            self.failed += 1

    def _check_budget(self) -> None:
        if not self.halted and self.budget.spent(self.failed, self.finished):
            self.halted = (
                f"failure budget spent: {self.failed} of {self.finished} finished board(s) "
                f"failed (budget {self.budget})"
            )
            self.listener.rollout("halting", self.halted)

    def _end(self, interrupted: bool) -> Report:
        if self.aborted:
            state, message = j.ABORTED, "aborted on request; boards not started were left alone"
        elif self.halted:
            state, message = j.HALTED, self.halted + "; boards not started were left alone"
        elif interrupted:
            # Left running with no controller: --resume picks it up.
            state, message = "interrupted", "interrupted; fleet rollout --resume finishes it"
        else:
            state, message = j.COMPLETED, "every board had its turn"
        if state != "interrupted":
            self.journal.set_state(self.id, state)
        self.listener.rollout(state, message)
        return Report(self.journal.get(self.id), state, message, outcomes(self.journal, self.id))

    # ---- requests from other terminals -------------------------------------------------
    def _requests(self) -> None:
        asked = self.journal.take_request(self.id)
        if asked == j.PAUSE and not self.paused:
            self.paused = True
            self.journal.set_state(self.id, j.PAUSED)
            self.listener.rollout(j.PAUSED, "paused: no board starts until fleet rollout continue")
        elif asked == j.CONTINUE and self.paused:
            self.paused = False
            self.journal.set_state(self.id, j.RUNNING)
            self.listener.rollout(j.RUNNING, "continuing")
        elif asked == j.ABORT and not self.aborted:
            self.aborted = True
            self.listener.rollout("aborting", "aborting: boards in flight finish, no others start")

    def _pause_between(self, number: int) -> None:
        self.paused = True
        self.journal.set_state(self.id, j.PAUSED)
        self.listener.rollout(
            j.PAUSED, f"wave {number} done; waiting for fleet rollout continue (or abort)"
        )
        while self.paused and not self.aborted:
            time.sleep(TICK)
            self._requests()

    # ---- one wave --------------------------------------------------------------------
    def _wave(self, pool: cf.ThreadPoolExecutor, names: list[str]) -> None:
        queue: deque[tuple[float, str]] = deque((0.0, n) for n in names)
        flying: dict[cf.Future[r.UpdateResult], str] = {}
        while queue or flying:
            self._requests()
            stop = self.halted or self.aborted
            if stop:
                queue.clear()
            now = time.monotonic()
            if not self.paused and not stop:
                for _ in range(len(queue)):
                    if len(flying) >= self.settings.parallel:
                        break
                    ready, name = queue.popleft()
                    if ready > now:
                        queue.append((ready, name))
                        continue
                    flying[pool.submit(self._update, name)] = name
            if not flying:
                time.sleep(TICK)
                continue
            finished, _ = cf.wait(flying, timeout=TICK, return_when=cf.FIRST_COMPLETED)
            for future in finished:
                name = flying.pop(future)
                retry_in = self._finish(name, future)
                if retry_in is not None:
                    queue.append((time.monotonic() + retry_in, name))

    def _update(self, name: str) -> r.UpdateResult:
        board = self.boards.get(name)
        if board is None:
            return _refusal(name, "the board is no longer in the inventory")

        def step(what: str) -> None:
            self.journal.step(self.id, name, what)
            self.last_step[name] = what
            self.listener.board_step(name, what)

        def progress(payload: str, sent: int, size: int) -> None:
            self.listener.board_bytes(name, payload, sent, size)

        options = machine.Options(
            trust=None,
            verified=True,
            skip_current=True,
            health_timeout=self.settings.health_timeout,
            attempts=self.settings.attempts,
            progress=progress,
            step=step,
            deltas=self.settings.deltas,
        )
        if self.last_step.get(name) in ("try", "trial", "settle"):
            # The controller died after asking this board to try: its own state decides.
            step("settle")
            settled = machine.settle(board.target, self.folder, options)
            if settled is not None:
                return settled
        return machine.update(board.target, self.folder, options)

    def _finish(self, name: str, future: cf.Future[r.UpdateResult]) -> float | None:
        """Record a board's result; the seconds until its retry, or None when it is done."""
        try:
            res = future.result()
        except Exception as exc:  # one board's surprise must not stop the rest
            res = _refusal(name, f"controller error: {exc}", r.Outcome.UNREACHABLE)
        tries = self.tries.get(name, 0)
        retryable = (
            res.outcome is r.Outcome.UNREACHABLE
            and res.reason != r.HOST_KEY_CHANGED
            and self.last_step.get(name) in _BEFORE_TRY
            and tries < self.settings.retries
        )
        if retryable and not (self.halted or self.aborted):
            self.tries[name] = tries + 1
            delay = min(MAX_BACKOFF, float(self.settings.backoff) * float(2**tries))
            self.journal.add_bytes(self.id, name, res.bytes_sent, res.method)
            self.journal.step(self.id, name, "retry", f"in {delay:g} s: {res.reason}")
            self.last_step[name] = "retry"
            self.listener.board_step(name, f"retry in {delay:g} s")
            return delay
        self.journal.finish_board(
            self.id,
            name,
            res.outcome.value,
            res.reason,
            res.detail,
            res.running_slot,
            res.bytes_sent,
            res.method,
        )
        self._count(res.outcome.value)
        self.listener.board_done(
            BoardOutcome(
                name,
                0,
                res.outcome.value,
                res.reason,
                res.detail,
                res.running_slot,
                res.bytes_sent,
                tries + 1,
                res.seconds,
                res.method,
            )
        )
        self._check_budget()
        return None


def _refusal(name: str, reason: str, outcome: r.Outcome = r.Outcome.REFUSED) -> r.UpdateResult:
    return r.UpdateResult(name, outcome, reason, 0, "", "", "", "", 0.0, 0)
