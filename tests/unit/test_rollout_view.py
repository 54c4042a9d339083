"""What a person watching a rollout on a terminal sees, drawn from the controller's events."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from fleet.cli.rollout_view import LiveView
from fleet.update.rollout import BoardOutcome

pytestmark = pytest.mark.unit


def drawn(view: LiveView) -> str:
    buffer = io.StringIO()
    Console(file=buffer, width=140, color_system=None).print(view._render())
    return buffer.getvalue()


def test_the_live_view_shows_waves_boards_in_flight_counts_bytes_and_eta() -> None:
    view = LiveView(parallel=2)
    view.planned([["a"], ["b", "c", "d"]], {})
    view.board_done(BoardOutcome("a", 1, "updated", seconds=4.0))
    view.board_step("b", "install rootfs")
    view.board_bytes("b", "boot", 1_000_000, 1_000_000)
    view.board_bytes("b", "rootfs", 1_500_000, 3_000_000)
    view.board_step("c", "trial")
    view.rollout("running", "wave 2 of 2: 3 board(s)")
    text = drawn(view)
    assert "rollout running: 1/4 done, 2 in flight; updated 1; 2.5 MB sent" in text
    assert "ETA 6 s" in text  # 4 s a board, 3 to go, 2 at a time
    assert "wave 1: 1/1  wave 2: 0/3" in text
    assert "install rootfs" in text and "62% of 4.0 MB" in text
    assert "a: updated" in text
    view.board_done(BoardOutcome("c", 2, "rolled-back", "health failed", seconds=6.0))
    text = drawn(view)
    assert "c: rolled-back: health failed" in text and "rolled-back 1" in text
    assert "trial" not in text.split("wave 1")[1].split("a: updated")[0]
