"""pytest plugin (entry point ``pytest11``): ``pytest SUITE --lab LAB.toml [--release R]
[--board NAME]`` runs a suite's tests on a lab's boards.

Each test that asks for a board fixture (``hil_board``, ``ssh``, ``console``, ``power``,
``http``) runs once per selected board; ``@pytest.mark.profile(NAME)`` and
``@pytest.mark.feature(NAME)`` narrow the boards, ``@pytest.mark.boards(N)`` hands a test
N boards at once (``hil_boards``). The session takes each board's lock, provisions it
with the release and checks it runs it healthy (LAVA's health check): a board that fails
that is marked bad for the run and its tests are skipped with the reason, not failed.

Without ``--lab`` the plugin does nothing (it is loaded in every pytest session)."""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet.errors import FleetError
from fleet.hil import locks
from fleet.hil.board import HilBoard, make_board
from fleet.hil.console import Console
from fleet.hil.labfile import Lab, LabBoard, load_lab
from fleet.hil.power import Power
from fleet.hil.provision import provision
from fleet.hil.release import Release, load, load_policy
from fleet.hil.remote import Http, Ssh
from fleet.hil.run import RUN_PID

BOARD_FIXTURES = ("hil_board", "ssh", "console", "power", "http")
PR_SET_PDEATHSIG = 1  # prctl(2)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("fleet-hil", "fleet hardware-in-the-loop (fleet hil run)")
    group.addoption("--lab", type=Path, help="the lab description (hardware-in-loop/labs/*.toml)")
    group.addoption("--release", type=Path, help="the release under test (a release folder)")
    group.addoption("--next-release", type=Path, help="a later release the update suites update to")
    group.addoption("--trust", type=Path, help="keys the releases must be signed by")
    group.addoption("--board", action="append", default=[], help="only this board (repeat)")
    group.addoption("--identity", type=Path, help="SSH key for boards with a network address")
    group.addoption(
        "--trust-new-host",
        action="store_true",
        help="accept and pin the host keys of boards not yet known",
    )
    group.addoption("--hil-results", type=Path, help="folder for console and agent logs")
    group.addoption(
        "--hil-no-provision",
        action="store_true",
        help="use the boards as they are (no flash or update first)",
    )
    # fleet hil run holds the boards' locks itself and hands them down.
    group.addoption("--hil-locked", action="store_true", help=argparse.SUPPRESS)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "profile(name): only boards of this board profile")
    config.addinivalue_line("markers", "feature(name): only boards the lab gives this feature")
    config.addinivalue_line("markers", "boards(n): the test takes n boards at once (hil_boards)")
    path = config.getoption("--lab", None)
    if path is not None and config.getoption("--hil-locked"):
        _die_with_parent()
    if path is not None:
        config.pluginmanager.register(HilSession(config, load_lab(path)), "fleet-hil-session")


def _die_with_parent() -> None:
    """A board's pytest under ``fleet hil run`` ends with the run: the run's locks go when
    it dies (SIGKILL included), and no test may then go on using a board nobody holds."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    parent = os.environ.get(RUN_PID)
    if parent is not None and os.getppid() != int(parent):
        os._exit(1)  # the run was gone before the signal was asked for


class HilSession:
    """The run's boards: locked for the whole session, provisioned on first use."""

    def __init__(self, config: pytest.Config, lab: Lab) -> None:
        self.config = config
        self.lab = lab
        names = config.getoption("--board") or [b.name for b in lab.boards]
        self.boards: list[LabBoard] = [lab.board(n) for n in names]
        self.results: Path = config.getoption("--hil-results") or Path("hil-results")
        self.trust_path: Path | None = config.getoption("--trust")
        self.policy = load_policy(self.trust_path)
        self._locks: list[locks.BoardLock] = []
        self._ready: dict[str, HilBoard] = {}
        self._bad: dict[str, str] = {}
        self._release: Release | None = None

    # ---- pytest hooks -------------------------------------------------------------------
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        if not self.config.getoption("--hil-locked"):
            self._locks = locks.acquire_many(self.lab, [b.name for b in self.boards], wait=0)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        for board in self._ready.values():
            board.collect_logs()
            board.close()
        for lock in self._locks:
            lock.release()

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        wanted = self._matching(metafunc.definition)
        if "hil_boards" in metafunc.fixturenames:
            marker = metafunc.definition.get_closest_marker("boards")
            count = int(marker.args[0]) if marker and marker.args else 2
            if len(wanted) < count:
                why = f"needs {count} boards; the lab has {len(wanted)} that match"
                metafunc.parametrize(
                    "hil_boards",
                    [pytest.param(None, marks=pytest.mark.skip(reason=why))],
                    ids=["too-few-boards"],
                )
            else:
                names = [b.name for b in wanted[:count]]
                metafunc.parametrize("hil_boards", [names], ids=["+".join(names)], indirect=True)
        elif any(f in metafunc.fixturenames for f in BOARD_FIXTURES):
            if not wanted:
                metafunc.parametrize(
                    "hil_board",
                    [
                        pytest.param(
                            None,
                            marks=pytest.mark.skip(
                                reason="no board of the lab matches this test's markers"
                            ),
                        )
                    ],
                    ids=["none"],
                )
            else:
                names = [b.name for b in wanted]
                metafunc.parametrize("hil_board", names, ids=names, indirect=True)

    # ---- boards -------------------------------------------------------------------------
    def _matching(self, item: pytest.Function | pytest.Item) -> list[LabBoard]:
        found = list(self.boards)
        for marker in item.iter_markers("profile"):
            found = [b for b in found if b.profile in marker.args]
        for marker in item.iter_markers("feature"):
            found = [b for b in found if all(f in b.features for f in marker.args)]
        return found

    def release(self) -> Release | None:
        """The release under test, verified once for the session."""
        folder = self.config.getoption("--release")
        if folder is None:
            return None
        if self._release is None:
            self._release = load(folder, self.policy)
        return self._release

    def board(self, name: str) -> HilBoard:
        if name in self._bad:
            pytest.skip(f"board {name} is bad for this run: {self._bad[name]}")
        if name not in self._ready:
            spec = self.lab.board(name)
            board = make_board(
                self.lab,
                spec,
                self.results / name,
                self.config.getoption("--identity"),
                self.config.getoption("--trust-new-host"),
            )
            try:
                if not self.config.getoption("--hil-no-provision"):
                    provision(board, self.release(), self.policy, self.trust_path)
                board.check_healthy(self.release())
            except FleetError as exc:
                self._bad[name] = f"provisioning failed: {exc}"
                board.collect_logs()
                board.close()
                (self.results / name).mkdir(parents=True, exist_ok=True)
                (self.results / name / "bad").write_text(self._bad[name] + "\n")
                pytest.skip(f"board {name} is bad for this run: {self._bad[name]}")
            self._ready[name] = board
        return self._ready[name]


def _session(request: pytest.FixtureRequest) -> HilSession:
    found = request.config.pluginmanager.get_plugin("fleet-hil-session")
    if not isinstance(found, HilSession):
        pytest.skip("no lab: give --lab LAB.toml")
    return found


@pytest.fixture()
def hil_board(request: pytest.FixtureRequest) -> HilBoard:
    return _session(request).board(str(request.param))


@pytest.fixture()
def hil_boards(request: pytest.FixtureRequest) -> list[HilBoard]:
    session = _session(request)
    return [session.board(name) for name in request.param]


@pytest.fixture()
def ssh(hil_board: HilBoard) -> Ssh:
    return hil_board.ssh


@pytest.fixture()
def power(hil_board: HilBoard) -> Power:
    return hil_board.power


@pytest.fixture()
def http(hil_board: HilBoard) -> Http:
    return hil_board.http


@pytest.fixture()
def console(hil_board: HilBoard) -> Iterator[Console]:
    opened = hil_board.open_console()
    yield opened
    opened.close()


@pytest.fixture()
def release(request: pytest.FixtureRequest) -> Release:
    found = _session(request).release()
    if found is None:
        pytest.skip("no release under test: give --release")
    return found


@pytest.fixture()
def next_release(request: pytest.FixtureRequest) -> Release:
    session = _session(request)
    folder = request.config.getoption("--next-release")
    if folder is None:
        pytest.skip("no later release to update to: give --next-release")
    return load(folder, session.policy)
