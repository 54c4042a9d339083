"""A rollout's waves, canary order and fleet-wide failure budget; the journal's records."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleet.errors import UsageError
from fleet.update import journal as j
from fleet.update.waves import Budget, canaries_first, parse_waves, plan

pytestmark = pytest.mark.unit

BOARDS = [f"b{i}" for i in range(1, 21)]


def sizes(text: str, count: int) -> list[int]:
    return [len(w) for w in plan(BOARDS[:count] if count <= 20 else
                                 [f"x{i}" for i in range(count)], parse_waves(text))]


def test_canary_then_percentages_of_the_rest_last_step_repeats() -> None:
    # 20 boards: 1; 10% of 19 = 1 (rounded down); 50% of 18 = 9; 100% of 9 = 9.
    assert sizes("1,10%,50%,100%", 20) == [1, 1, 9, 9]
    # The last step repeats: 2, then 5 at a time.
    assert sizes("2,5", 20) == [2, 5, 5, 5, 3]
    # A percentage never yields an empty wave.
    assert sizes("10%", 5) == [1, 1, 1, 1, 1]
    assert sizes("30%", 10) == [3, 2, 1, 1, 1, 1, 1]
    assert sizes("100%", 7) == [7]
    assert sizes("50", 3) == [3]


def test_every_board_once_in_order() -> None:
    waves = plan(BOARDS, parse_waves("1,25%"))
    assert [b for w in waves for b in w] == BOARDS


@given(
    st.integers(min_value=1, max_value=400),
    st.lists(
        st.one_of(
            st.integers(min_value=1, max_value=50).map(str),
            st.integers(min_value=1, max_value=100).map(lambda p: f"{p}%"),
        ),
        min_size=1,
        max_size=6,
    ),
)
def test_plan_properties(count: int, steps: list[str]) -> None:
    boards = [f"b{i}" for i in range(count)]
    waves = plan(boards, parse_waves(",".join(steps)))
    assert [b for w in waves for b in w] == boards
    assert all(w for w in waves)


@pytest.mark.parametrize("text", ["", "0", "1.5", "0%", "101%", "ten", "1,,2", "-1", "5%%"])
def test_bad_wave_lists_are_refused(text: str) -> None:
    with pytest.raises(UsageError):
        parse_waves(text)


def test_canaries_lead_and_both_sides_keep_their_order() -> None:
    assert canaries_first(["a", "b", "c", "d"], {"c", "a"}) == ["a", "c", "b", "d"]


def test_a_count_budget_tolerates_n_failures() -> None:
    budget = Budget.parse("2", 1)
    assert not budget.spent(2, 2)
    assert budget.spent(3, 3)
    assert Budget.parse("0", 1).spent(1, 1)


def test_a_percent_budget_waits_for_the_minimum_then_judges_finished_boards() -> None:
    budget = Budget.parse("20%", 5)
    assert not budget.spent(2, 2)  # 100% failed, but only 2 of the 5 needed have finished
    assert budget.spent(2, 5)  # 40% > 20%
    assert not budget.spent(1, 5)  # 20% is within it
    assert not budget.spent(2, 10)


@pytest.mark.parametrize("text", ["-1", "x", "120%", "5.5", ""])
def test_bad_budgets_are_refused(text: str) -> None:
    with pytest.raises(UsageError):
        Budget.parse(text, 1)


def _rollout() -> j.Rollout:
    return j.Rollout(0, "/r", 3, "3.0.0", "ab" * 32, "/inv.toml", "", {"parallel": 2},
                     j.RUNNING, "", time.time(), None, None)


def test_journal_records_steps_outcomes_and_requests(tmp_path: Path) -> None:
    book = j.SqliteJournal(tmp_path / "fleet.rollouts.sqlite")
    record = book.create(_rollout(), [["x"], ["a"], ["b", "c"]])
    assert [(b.name, b.wave, b.state) for b in book.boards(record.id)] == [
        ("x", 0, j.PLANNED), ("a", 1, j.PLANNED), ("b", 2, j.PLANNED), ("c", 2, j.PLANNED)]
    book.step(record.id, "a", "connect")
    book.step(record.id, "a", "install rootfs")
    book.finish_board(record.id, "a", "updated", "", "", "B", 4096)
    a = book.boards(record.id)[1]
    assert (a.state, a.outcome, a.slot, a.bytes_sent) == ("done", "updated", "B", 4096)
    assert a.attempts == 1
    assert [s.step for s in book.steps(record.id, "a")] == ["connect", "install rootfs", "done"]
    book.request(record.id, j.PAUSE)
    assert book.take_request(record.id) == j.PAUSE
    assert book.take_request(record.id) == ""
    book.set_state(record.id, j.HALTED)
    assert book.get(record.id).state == j.HALTED and book.get(record.id).finished
    book.close()
    # Read back by a new connection, as --resume and history do.
    again = j.SqliteJournal(tmp_path / "fleet.rollouts.sqlite")
    assert again.latest() == again.get(record.id)
    assert [r.id for r in again.history()] == [record.id]


def test_how_a_boards_payloads_went_in_joins_across_its_attempts(tmp_path: Path) -> None:
    book = j.SqliteJournal(tmp_path / "fleet.rollouts.sqlite")
    record = book.create(_rollout(), [["a", "b", "c"]])
    book.finish_board(record.id, "a", "updated", "", "", "B", 9983, "delta")
    # b's first attempt put its deltas in and was cut; the retry sent a payload whole.
    book.add_bytes(record.id, "b", 5000, "delta")
    book.finish_board(record.id, "b", "updated", "", "", "B", 16_000_000, "full")
    book.finish_board(record.id, "c", "unreachable", "no route", "", "", 0, "")
    got = {b.name: (b.bytes_sent, b.method) for b in book.boards(record.id)}
    assert got == {"a": (9983, "delta"), "b": (16_005_000, "mixed"), "c": (0, "")}


def test_methods_join_to_delta_full_or_mixed() -> None:
    assert j.join_methods() == "" and j.join_methods("", "") == ""
    assert j.join_methods("delta", "delta", "") == "delta"
    assert j.join_methods("full") == "full"
    assert j.join_methods("delta", "full") == "mixed"
    assert j.join_methods("mixed", "delta") == "mixed"


# The journal as the first fleet with rollouts wrote it (schema 1: no method column).
_SCHEMA_1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta VALUES ('schema', '1');
CREATE TABLE rollouts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    release TEXT NOT NULL, release_number INTEGER NOT NULL, version TEXT NOT NULL,
    manifest_sha256 TEXT NOT NULL, inventory TEXT NOT NULL, grp TEXT NOT NULL,
    options TEXT NOT NULL, state TEXT NOT NULL, control TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL, finished REAL, controller_pid INTEGER
);
CREATE TABLE boards (
    rollout INTEGER NOT NULL REFERENCES rollouts(id), name TEXT NOT NULL,
    wave INTEGER NOT NULL, position INTEGER NOT NULL, state TEXT NOT NULL,
    outcome TEXT NOT NULL DEFAULT '', reason TEXT NOT NULL DEFAULT '',
    detail TEXT NOT NULL DEFAULT '', slot TEXT NOT NULL DEFAULT '',
    bytes_sent INTEGER NOT NULL DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 0,
    started REAL, finished REAL,
    PRIMARY KEY (rollout, name)
);
CREATE TABLE steps (
    rollout INTEGER NOT NULL, board TEXT NOT NULL, seq INTEGER NOT NULL,
    step TEXT NOT NULL, at REAL NOT NULL, info TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (rollout, board, seq)
);
INSERT INTO rollouts (release, release_number, version, manifest_sha256, inventory, grp,
    options, state, created) VALUES ('/r', 3, '3.0.0', 'ab', '/inv.toml', '', '{}',
    'running', 1.0);
INSERT INTO boards (rollout, name, wave, position, state, bytes_sent)
    VALUES (1, 'a', 0, 0, 'install rootfs', 700);
"""


def test_a_journal_an_older_fleet_wrote_is_brought_up_to_date(tmp_path: Path) -> None:
    """An interrupted rollout in an old journal can still be resumed by this fleet."""
    import sqlite3

    path = tmp_path / "fleet.rollouts.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript(_SCHEMA_1)
    book = j.SqliteJournal(path)
    (a,) = book.boards(1)
    assert (a.state, a.bytes_sent, a.method) == ("install rootfs", 700, "")
    book.finish_board(1, "a", "updated", "", "", "B", 300, "delta")
    assert book.boards(1)[0].method == "delta"
    book.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT value FROM meta WHERE key='schema'").fetchone() == (
            str(j.SCHEMA_VERSION),)


@pytest.mark.parametrize("schema", ["99", "x", "0"])
def test_a_journal_of_a_schema_this_fleet_does_not_know_is_refused(
    tmp_path: Path, schema: str
) -> None:
    import sqlite3

    path = tmp_path / "fleet.rollouts.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript(_SCHEMA_1.replace("'schema', '1'", f"'schema', '{schema}'"))
    before = path.read_bytes()
    with pytest.raises(j.JournalError, match=f"journal schema {schema}, this fleet reads 2"):
        j.SqliteJournal(path)
    assert path.read_bytes() == before


def test_a_file_that_is_not_a_journal_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "x.sqlite"
    bad.write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(j.JournalError, match="not a usable rollout journal"):
        j.SqliteJournal(bad)


def _hold(path: str, ready: multiprocessing.synchronize.Event) -> None:
    book = j.SqliteJournal(Path(path))
    with book.controller():
        ready.set()
        time.sleep(60)


def test_the_controller_claim_goes_with_its_process(tmp_path: Path) -> None:
    path = tmp_path / "f.rollouts.sqlite"
    j.SqliteJournal(path).close()
    ready = multiprocessing.get_context("fork").Event()
    proc = multiprocessing.get_context("fork").Process(target=_hold, args=(str(path), ready))
    proc.start()
    try:
        assert ready.wait(10)
        book = j.SqliteJournal(path)
        assert book.controller_alive()
        claim = pytest.raises(j.JournalError, match=f"another controller.*pid {proc.pid}")
        with claim, book.controller():
            pass
        os.kill(proc.pid, 9)  # SIGKILL: no cleanup runs, the kernel drops the lock
        proc.join()
        assert not book.controller_alive()
        with book.controller():
            assert book.controller_alive()
    finally:
        if proc.is_alive():
            proc.kill()
