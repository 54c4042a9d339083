"""The rollout journal: every step of every board, written before it is taken.

``Journal`` is the interface the controller uses; ``SqliteJournal`` is the embedded
default, one file beside the inventory. Several controllers sharing one fleet would put a
PostgreSQL class behind the same methods (docs/rollouts.md says what that takes: row locks
on a board's claim instead of the file lock, LISTEN/NOTIFY for pause and abort).

Durability is the point: a row is committed (``synchronous=FULL``) before the step it
names starts, so a controller killed at any instant leaves a journal that says, for every
board, the last step it may have taken. ``--resume`` reads it back.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from fleet.errors import UsageError
from fleet.update.result import join_methods

SCHEMA_VERSION = 2
# Each schema's step from the one before: a journal an older fleet wrote stays usable
# (a rollout it left interrupted can still be resumed) instead of being refused.
_MIGRATIONS = {
    2: "ALTER TABLE boards ADD COLUMN method TEXT NOT NULL DEFAULT ''",
}

# Rollout states. running and paused are live (a controller may hold them); the rest end.
RUNNING = "running"
PAUSED = "paused"
COMPLETED = "completed"
HALTED = "halted"
ABORTED = "aborted"
FINAL = (COMPLETED, HALTED, ABORTED)

# Board states besides the steps the update machine names (connect, verify, ...).
PLANNED = "planned"
DONE = "done"

# Requests another terminal leaves for the controller.
PAUSE = "pause"
CONTINUE = "continue"
ABORT = "abort"


class JournalError(UsageError):
    pass


@dataclass(frozen=True)
class Rollout:
    id: int
    release: str  # the release folder
    release_number: int
    version: str
    manifest_sha256: str
    inventory: str
    group: str
    options: dict[str, Any]
    state: str
    control: str  # the last request (pause, continue, abort) not yet acted on
    created: float
    finished: float | None
    controller_pid: int | None


@dataclass(frozen=True)
class BoardRecord:
    rollout: int
    name: str
    wave: int
    position: int
    state: str  # planned, a step of the update, or done
    outcome: str  # "" until done: updated, rolled-back, refused, unreachable, skipped
    reason: str
    detail: str
    slot: str
    bytes_sent: int
    attempts: int
    started: float | None
    finished: float | None
    method: str = ""  # how its payloads went in: delta, full or mixed; "" if none did


@dataclass(frozen=True)
class StepRecord:
    rollout: int
    board: str
    seq: int
    step: str
    at: float
    info: str


class Journal(Protocol):
    def create(self, rollout: Rollout, waves: list[list[str]]) -> Rollout: ...
    def get(self, rollout_id: int) -> Rollout: ...
    def latest(self) -> Rollout | None: ...
    def history(self) -> list[Rollout]: ...
    def boards(self, rollout_id: int) -> list[BoardRecord]: ...
    def steps(self, rollout_id: int, board: str | None = None) -> list[StepRecord]: ...
    def step(self, rollout_id: int, board: str, step: str, info: str = "") -> None: ...
    def finish_board(
        self,
        rollout_id: int,
        board: str,
        outcome: str,
        reason: str,
        detail: str,
        slot: str,
        bytes_sent: int,
        method: str = "",
    ) -> None: ...
    def add_bytes(self, rollout_id: int, board: str, sent: int, method: str = "") -> None: ...
    def set_state(self, rollout_id: int, state: str, pid: int | None = None) -> None: ...
    def request(self, rollout_id: int, control: str) -> None: ...
    def take_request(self, rollout_id: int) -> str: ...
    def controller(self) -> contextlib.AbstractContextManager[None]: ...
    def controller_alive(self) -> bool: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rollouts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    release TEXT NOT NULL, release_number INTEGER NOT NULL, version TEXT NOT NULL,
    manifest_sha256 TEXT NOT NULL, inventory TEXT NOT NULL, grp TEXT NOT NULL,
    options TEXT NOT NULL, state TEXT NOT NULL, control TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL, finished REAL, controller_pid INTEGER
);
CREATE TABLE IF NOT EXISTS boards (
    rollout INTEGER NOT NULL REFERENCES rollouts(id), name TEXT NOT NULL,
    wave INTEGER NOT NULL, position INTEGER NOT NULL, state TEXT NOT NULL,
    outcome TEXT NOT NULL DEFAULT '', reason TEXT NOT NULL DEFAULT '',
    detail TEXT NOT NULL DEFAULT '', slot TEXT NOT NULL DEFAULT '',
    bytes_sent INTEGER NOT NULL DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 0,
    started REAL, finished REAL, method TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (rollout, name)
);
CREATE TABLE IF NOT EXISTS steps (
    rollout INTEGER NOT NULL, board TEXT NOT NULL, seq INTEGER NOT NULL,
    step TEXT NOT NULL, at REAL NOT NULL, info TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (rollout, board, seq)
);
"""

_SELECT_ROLLOUTS = (
    "SELECT id, release, release_number, version, manifest_sha256, inventory, grp, options,"
    " state, control, created, finished, controller_pid FROM rollouts"
)


def default_path(inventory: Path) -> Path:
    """Beside the inventory: ``fleet.toml`` -> ``fleet.rollouts.sqlite``."""
    return inventory.with_name(f"{inventory.stem}.rollouts.sqlite")


class SqliteJournal:
    """One SQLite file; one connection shared by the controller's threads under a lock
    (each write is tiny; the updates themselves take seconds)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._lock_file: int | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                str(path), timeout=10.0, check_same_thread=False, isolation_level=None
            )
            # A journal of a schema this fleet does not know is left exactly as it is.
            found = self._schema()
            if found is not None and not (found.isdigit() and 1 <= int(found) <= SCHEMA_VERSION):
                self._db.close()
                raise JournalError(
                    f"{path}: journal schema {found}, this fleet reads {SCHEMA_VERSION}"
                )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            if found is None:
                self._db.execute(
                    "INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),)
                )
            else:
                self._migrate(int(found))
        except (sqlite3.DatabaseError, OSError) as exc:
            raise JournalError(f"{path}: not a usable rollout journal: {exc}") from exc

    def _schema(self) -> str | None:
        """The schema the file says it has; None for a new, empty file."""
        if not self._db.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'"
        ).fetchone():
            return None
        row = self._db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        return None if row is None else str(row[0])

    def _migrate(self, found: int) -> None:
        if found == SCHEMA_VERSION:
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for version in range(found + 1, SCHEMA_VERSION + 1):
                self._db.execute(_MIGRATIONS[version])
            self._db.execute("UPDATE meta SET value=? WHERE key='schema'", (str(SCHEMA_VERSION),))
            self._db.execute("COMMIT")
        except sqlite3.DatabaseError:
            self._db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self._db.close()

    def _write(self, sql: str, args: tuple[Any, ...]) -> None:
        def write() -> None:
            self._db.execute(sql, args)

        self._transaction(write)

    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        with self._lock:
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.DatabaseError as exc:
                raise JournalError(f"{self.path}: cannot read the journal: {exc}") from exc

    def _transaction(self, body: Callable[[], None]) -> None:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                body()
                self._db.execute("COMMIT")
            except sqlite3.DatabaseError as exc:
                with contextlib.suppress(sqlite3.DatabaseError):
                    self._db.execute("ROLLBACK")
                raise JournalError(f"{self.path}: cannot write the journal: {exc}") from exc

    # ---- rollouts ------------------------------------------------------------------
    def create(self, rollout: Rollout, waves: list[list[str]]) -> Rollout:
        made: list[int] = []

        def write() -> None:
            cur = self._db.execute(
                "INSERT INTO rollouts (release, release_number, version, manifest_sha256,"
                " inventory, grp, options, state, created, controller_pid)"
                " VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    rollout.release,
                    rollout.release_number,
                    rollout.version,
                    rollout.manifest_sha256,
                    rollout.inventory,
                    rollout.group,
                    json.dumps(rollout.options, sort_keys=True),
                    RUNNING,
                    rollout.created,
                    os.getpid(),
                ),
            )
            rid = int(cur.lastrowid or 0)
            position = 0
            for number, wave in enumerate(waves):
                for name in wave:
                    self._db.execute(
                        "INSERT INTO boards (rollout, name, wave, position, state)"
                        " VALUES (?,?,?,?,?)",
                        (rid, name, number, position, PLANNED),
                    )
                    position += 1
            made.append(rid)

        self._transaction(write)
        return self.get(made[0])

    def _rollout(self, row: tuple[Any, ...]) -> Rollout:
        return Rollout(
            id=row[0],
            release=row[1],
            release_number=row[2],
            version=row[3],
            manifest_sha256=row[4],
            inventory=row[5],
            group=row[6],
            options=json.loads(row[7]),
            state=row[8],
            control=row[9],
            created=row[10],
            finished=row[11],
            controller_pid=row[12],
        )

    def get(self, rollout_id: int) -> Rollout:
        rows = self._read(_SELECT_ROLLOUTS + " WHERE id=?", (rollout_id,))
        if not rows:
            raise JournalError(f"{self.path}: no rollout {rollout_id}")
        return self._rollout(rows[0])

    def latest(self) -> Rollout | None:
        rows = self._read(_SELECT_ROLLOUTS + " ORDER BY id DESC LIMIT 1")
        return self._rollout(rows[0]) if rows else None

    def history(self) -> list[Rollout]:
        return [self._rollout(r) for r in self._read(_SELECT_ROLLOUTS + " ORDER BY id")]

    def set_state(self, rollout_id: int, state: str, pid: int | None = None) -> None:
        finished = time.time() if state in FINAL else None
        self._write(
            "UPDATE rollouts SET state=?, finished=?, controller_pid=COALESCE(?, controller_pid)"
            " WHERE id=?",
            (state, finished, pid, rollout_id),
        )

    def request(self, rollout_id: int, control: str) -> None:
        self._write("UPDATE rollouts SET control=? WHERE id=?", (control, rollout_id))

    def take_request(self, rollout_id: int) -> str:
        # Looked at five times a second: a plain read first, the write lock only when
        # there is a request to take.
        rows = self._read("SELECT control FROM rollouts WHERE id=?", (rollout_id,))
        if not rows or not rows[0][0]:
            return ""
        taken: list[str] = []

        def take() -> None:
            row = self._db.execute(
                "SELECT control FROM rollouts WHERE id=?", (rollout_id,)
            ).fetchone()
            if row and row[0]:
                taken.append(str(row[0]))
                self._db.execute("UPDATE rollouts SET control='' WHERE id=?", (rollout_id,))

        self._transaction(take)
        return taken[0] if taken else ""

    # ---- boards --------------------------------------------------------------------
    def boards(self, rollout_id: int) -> list[BoardRecord]:
        rows = self._read(
            "SELECT rollout, name, wave, position, state, outcome, reason, detail, slot,"
            " bytes_sent, attempts, started, finished, method FROM boards WHERE rollout=?"
            " ORDER BY position",
            (rollout_id,),
        )
        return [BoardRecord(*row) for row in rows]

    def steps(self, rollout_id: int, board: str | None = None) -> list[StepRecord]:
        if board is None:
            rows = self._read(
                "SELECT rollout, board, seq, step, at, info FROM steps WHERE rollout=?"
                " ORDER BY at, seq",
                (rollout_id,),
            )
        else:
            rows = self._read(
                "SELECT rollout, board, seq, step, at, info FROM steps"
                " WHERE rollout=? AND board=? ORDER BY seq",
                (rollout_id, board),
            )
        return [StepRecord(*row) for row in rows]

    def step(self, rollout_id: int, board: str, step: str, info: str = "") -> None:
        self._transaction(lambda: self._step(rollout_id, board, step, info))

    def finish_board(
        self,
        rollout_id: int,
        board: str,
        outcome: str,
        reason: str,
        detail: str,
        slot: str,
        bytes_sent: int,
        method: str = "",
    ) -> None:
        """The board's last step and its outcome, in one transaction: a journal never
        says done without saying how."""

        def write() -> None:
            self._step(rollout_id, board, DONE, f"{outcome}: {reason}" if reason else outcome)
            self._db.execute(
                "UPDATE boards SET outcome=?, reason=?, detail=?, slot=?,"
                " bytes_sent=bytes_sent + ?, finished=? WHERE rollout=? AND name=?",
                (outcome, reason, detail, slot, bytes_sent, time.time(), rollout_id, board),
            )
            self._add_method(rollout_id, board, method)

        self._transaction(write)

    def _add_method(self, rollout_id: int, board: str, method: str) -> None:
        """Join this attempt's method to the ones before: a board whose first attempt
        put deltas in and whose retry sent a payload whole shows mixed."""
        row = self._db.execute(
            "SELECT method FROM boards WHERE rollout=? AND name=?", (rollout_id, board)
        ).fetchone()
        if row is None:
            return
        joined = join_methods(str(row[0]), method)
        self._db.execute(
            "UPDATE boards SET method=? WHERE rollout=? AND name=?", (joined, rollout_id, board)
        )

    def _step(self, rollout_id: int, board: str, step: str, info: str) -> None:
        now = time.time()
        (seq,) = self._db.execute(
            "SELECT COALESCE(MAX(seq), 0) + 1 FROM steps WHERE rollout=? AND board=?",
            (rollout_id, board),
        ).fetchone()
        self._db.execute(
            "INSERT INTO steps VALUES (?,?,?,?,?,?)", (rollout_id, board, seq, step, now, info)
        )
        self._db.execute(
            "UPDATE boards SET state=?, started=COALESCE(started, ?),"
            " attempts=attempts + ? WHERE rollout=? AND name=?",
            (step, now, 1 if step == "connect" else 0, rollout_id, board),
        )

    def add_bytes(self, rollout_id: int, board: str, sent: int, method: str = "") -> None:
        """Bytes a failed attempt sent, and how, kept when the board is tried again."""

        def write() -> None:
            self._db.execute(
                "UPDATE boards SET bytes_sent=bytes_sent + ? WHERE rollout=? AND name=?",
                (sent, rollout_id, board),
            )
            self._add_method(rollout_id, board, method)

        self._transaction(write)

    # ---- the controller's claim ----------------------------------------------------
    @property
    def _lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    @contextlib.contextmanager
    def controller(self) -> Iterator[None]:
        """Hold the journal for one controller: an flock on a file beside it, which the
        kernel drops when this process ends however it ends (SIGKILL included)."""
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = self._holder()
            raise JournalError(
                f"{self.path}: another controller runs a rollout from this journal"
                f"{f' (pid {holder})' if holder else ''}; use fleet rollout pause, continue "
                "or abort on it, or wait for it to end"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_file = fd
        try:
            yield
        finally:
            self._lock_file = None
            os.close(fd)

    def _holder(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int(self._lock_path.read_text().split()[0])
        return None

    def controller_alive(self) -> bool:
        if self._lock_file is not None:
            return True
        try:
            fd = os.open(self._lock_path, os.O_RDWR)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False
