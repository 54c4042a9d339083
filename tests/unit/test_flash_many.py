"""The pieces of a many-target flash that need no device: hostname patterns, which
option combinations are refused, and the run itself keeping one failure (or a bug,
or Ctrl-C) from reaching the other targets."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet.cli.flash_many import Request, check_request
from fleet.errors import FlashError, UsageError
from fleet.flash.many import (
    Cancelled,
    Outcome,
    Target,
    check_pattern,
    hostname_for,
    run_all,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("pattern", "target", "name"),
    [
        ("kiosk-{n}", Target("/dev/sdb", 3), "kiosk-3"),
        ("kiosk-{n:02}", Target("/dev/sdb", 3), "kiosk-03"),
        ("pi-{serial}", Target("/dev/sdb", 1, "10000000DEADBEEF"), "pi-10000000deadbeef"),
        ("line2-{n:03}-{serial}", Target("/dev/sdc", 12, "ab12"), "line2-012-ab12"),
        ("plain", Target("/dev/sdb", 1), "plain"),
    ],
)
def test_hostname_patterns(pattern: str, target: Target, name: str) -> None:
    assert hostname_for(pattern, target) == name


@pytest.mark.parametrize(
    "pattern",
    ["k-{n.__class__}", "k-{0}", "k-{}", "k-{serial!r}", "k-{n:>10}", "k-{serial:5}", "k-{", "{x}"],
)
def test_patterns_that_reach_further_are_refused(pattern: str) -> None:
    with pytest.raises(UsageError, match="--hostname"):
        check_pattern(pattern)


def test_serial_pattern_for_a_target_without_serial() -> None:
    with pytest.raises(UsageError, match="needs a serial, and /dev/sdb has none"):
        hostname_for("pi-{serial}", Target("/dev/sdb", 1))


def req(**kw: object) -> Request:
    base: dict[str, object] = {
        "devices": [],
        "wait": False,
        "count": None,
        "all_removable": False,
        "timeout": None,
        "yes": False,
        "rpiboot": False,
        "rpiboot_files": Path("/nonexistent"),
    }
    base.update(kw)
    return Request(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("request_", "hostname", "message"),
    [
        (req(devices=["/dev/a", "/dev/b"], count=2, wait=True), None, "one way"),
        (req(count=0, wait=True), None, "1 or more"),
        (req(count=2), None, "add --wait"),
        (req(all_removable=True, yes=True), None, "asks once; no --yes"),
        (req(devices=["/dev/a", "/dev/b"]), "same-name", "alike"),
        (req(devices=["/dev/a", "/dev/b"], wait=True), None, "not a list"),
        (req(devices=["/dev/a", "/dev/b"], rpiboot=True), None, "needs --count"),
        (req(devices=["/dev/a", "/dev/b"]), "pi-{serial}", "only with --rpiboot"),
        (req(count=3, wait=True), "pi-{serial}", "only with --rpiboot"),
    ],
)
def test_refused_combinations(request_: Request, hostname: str | None, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        check_request(request_, hostname, uses_settings_file=False)


def test_count_with_rpiboot_needs_no_wait_and_a_settings_file_allows_one_hostname() -> None:
    check_request(req(count=4, rpiboot=True, yes=True), None, uses_settings_file=False)
    check_request(req(devices=["/dev/a", "/dev/b"]), "lab", uses_settings_file=True)


def done(target: Target, error: str | None = None) -> Outcome:
    return Outcome(target.node, target.n, target.serial, None, 1, 0.0, error is None, error)


def test_one_failure_or_bug_never_reaches_the_others() -> None:
    def one(target: Target, cancel: threading.Event) -> Outcome:
        if target.n == 2:
            return done(target, "/dev/b: Input/output error")
        return done(target)

    run = run_all([Target("/dev/a", 1), Target("/dev/b", 2), Target("/dev/c", 3)], one)
    assert [o.ok for o in run.outcomes] == [True, False, True]
    assert not run.ok and run.stopped is None


def test_targets_that_stop_coming_keep_what_was_started() -> None:
    def arriving() -> Iterator[Target]:
        yield Target("/dev/a", 1)
        raise FlashError("no new matching device appeared within 5 s")

    run = run_all(arriving(), lambda t, c: done(t))
    assert [o.node for o in run.outcomes] == ["/dev/a"]
    assert run.stopped == "no new matching device appeared within 5 s" and not run.ok


def test_targets_run_at_the_same_time() -> None:
    inside = threading.Barrier(3, timeout=10)  # all three must be in at once to pass

    def one(target: Target, cancel: threading.Event) -> Outcome:
        inside.wait()
        return done(target)

    run = run_all([Target(f"/dev/{x}", i) for i, x in enumerate("abc", 1)], one)
    assert run.ok


def test_ctrl_c_cancels_every_target_and_is_reported() -> None:
    started = threading.Barrier(3, timeout=10)

    def one(target: Target, cancel: threading.Event) -> Outcome:
        started.wait()
        while not cancel.is_set():
            time.sleep(0.01)
        return done(target, f"interrupted; {target.node} holds a partial image")

    def arriving() -> Iterator[Target]:
        yield Target("/dev/a", 1)
        yield Target("/dev/b", 2)
        started.wait()  # both are writing: the person presses Ctrl-C
        raise KeyboardInterrupt

    run = run_all(arriving(), one)
    assert run.interrupted and not run.ok
    assert all("partial image" in str(o.error) for o in run.outcomes)


def test_cancelled_is_a_keyboard_interrupt() -> None:
    # flash() turns KeyboardInterrupt into "interrupted; <device state>"
    assert issubclass(Cancelled, KeyboardInterrupt)
