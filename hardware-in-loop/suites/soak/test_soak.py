"""Soak: update and rollback again and again, with a power cut at a random offset in each
cycle, and count what does not come back. The board is provisioned with --release; each
cycle sends --next-release, a release whose app fails its health check (so every trial
rolls back, the floor never rises and the cycles can go on), and cuts the power at a
random point: somewhere in the stream, or some seconds into the trial boot, its health
check or its rollback. Each cycle is a test case; one that fails is a board that did not
come back committed and healthy on the release it had (bricked)."""

from __future__ import annotations

import random
import threading
import time

import pytest

from fleet.hil.board import HilBoard
from fleet.hil.release import Release
from fleet.update import machine

UP_TIMEOUT = 300.0
TRIAL_WINDOW = 4.0  # seconds after `try` a cut may land in (a sim board's trial: ~3 s)


def test_cycle(
    hil_board: HilBoard,
    release: Release,
    next_release: Release,
    cycle: int,
    request: pytest.FixtureRequest,
    record_property: pytest.RecordProperty,
) -> None:
    rng = random.Random(int(request.config.getoption("--soak-seed")) * 1000 + cycle)
    total = sum(p.size for p in next_release.manifest.payloads)
    offset = rng.randrange(0, int(total * 1.5) + 1)
    where = f"byte {offset} of {total}" if offset < total else ""
    delay = 0.0
    if not where:
        delay = rng.uniform(0.0, TRIAL_WINDOW)
        where = f"{delay:.2f} s into the trial"
    record_property("cut_planned", where)
    cut = threading.Event()
    trial_started = [0.0]
    update_done = threading.Event()

    once = threading.Lock()

    def cut_now() -> None:
        with once:  # the timer's thread and this one may both come to cut
            if cut.is_set():
                return
            cut.set()
            if trial_started[0]:
                late = " (the trial had ended)" if update_done.is_set() else ""
                record_property(
                    "cut_at", f"{time.monotonic() - trial_started[0]:.2f} s into the trial{late}"
                )
            elif offset < total:
                record_property("cut_at", f"byte {offset} of {total}")
            hil_board.power.off()
            hil_board.power.on()

    def progress(_name: str, sent: int, _size: int) -> None:
        if offset < total and sent >= offset:
            cut_now()

    def step(what: str) -> None:
        if offset >= total and what == "trial":
            trial_started[0] = time.monotonic()
            threading.Timer(delay, cut_now).start()

    options = machine.Options(trust=None, progress=progress, step=step, deltas=False,
                              health_timeout=120)
    result = machine.update(hil_board.target, next_release.folder, options)
    update_done.set()
    if not cut.is_set():  # the trial ended before the cut's moment came: cut now
        cut_now()
    record_property("outcome", result.outcome.value)
    now = hil_board.wait_settled(UP_TIMEOUT)
    assert now.app_version == release.version, (where, now.raw)
    info = now.slot(now.running_slot)
    assert info is not None and info.manifest_sha256 == release.sha256, (where, now.raw)
