"""soak's own options: how many cycles, and the seed of the cut offsets."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("fleet-hil soak")
    group.addoption("--cycles", type=int, default=5, help="update/rollback cycles (test cases)")
    group.addoption("--soak-seed", type=int, default=15, help="seed of the cut offsets")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "cycle" in metafunc.fixturenames:
        count = int(metafunc.config.getoption("--cycles"))
        metafunc.parametrize("cycle", range(1, count + 1), ids=[f"cycle-{n}" for n in
                                                                range(1, count + 1)])
