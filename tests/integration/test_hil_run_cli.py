"""fleet hil run and boards on bad input, and the run's JUnit merge, with no board booted."""

from __future__ import annotations

import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from fleet.hil import junit
from tests.conftest import REPO, fleet

pytestmark = pytest.mark.integration

LAB = REPO / "hardware-in-loop/labs/virtual.toml"


def test_an_unknown_board_or_suite_is_refused_before_anything_is_taken(tmp_path: Path) -> None:
    proc = fleet("hil", "run", REPO / "hardware-in-loop/suites/smoke", "--lab", LAB,
                 "--board", "nope", "--results", tmp_path / "r", check=False,
                 env={"FLEET_HIL_LOCKS": str(tmp_path / "locks")})
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "fleet: error: lab 'virtual' has no board 'nope' (known: hil-q1, hil-q2, hil-s1)"
    )
    assert not (tmp_path / "r").exists()
    proc = fleet("hil", "run", tmp_path / "nosuite", "--lab", LAB, check=False)
    assert proc.returncode == 2 and "no such suite" in proc.stderr


def test_a_bad_lab_file_names_its_line(tmp_path: Path) -> None:
    bad = tmp_path / "lab.toml"
    bad.write_text(LAB.read_text().replace('power = "virtual"', 'power = "relayy"', 1))
    proc = fleet("hil", "boards", "--lab", bad, check=False)
    assert proc.returncode != 0
    line = next(n for n, text in enumerate(bad.read_text().splitlines(), 1) if "relayy" in text)
    assert f"lab.toml:{line}: board 'hil-q1': unknown power driver 'relayy'" in proc.stderr


def test_the_merged_junit_names_each_board_and_keeps_a_missing_one(tmp_path: Path) -> None:
    part = tmp_path / "a.xml"
    part.write_text(
        '<?xml version="1.0"?><testsuites><testsuite name="pytest">'
        '<testcase classname="test_smoke" name="test_up[a]"/>'
        '<testcase classname="test_smoke" name="test_http[a]"><skipped message="x"/></testcase>'
        '<testcase classname="test_smoke" name="test_cut[a]"><failure message="y"/></testcase>'
        "</testsuite></testsuites>"
    )
    out = tmp_path / "out.xml"
    counts = junit.merge({"a": (part, ""), "b": (tmp_path / "missing.xml", "pytest exit 4")}, out)
    assert counts["a"] == junit.Counts(passed=1, failed=1, skipped=1)
    assert counts["b"] == junit.Counts(errors=1)
    root = ET.parse(out).getroot()
    names = [c.get("name") for c in root.iter("testcase")]
    assert names == ["a::test_up[a]", "a::test_http[a]", "a::test_cut[a]", "b::run"]
    suite_b = root.findall("testsuite")[1]
    assert suite_b.get("name") == "b" and suite_b.get("errors") == "1"
    error = suite_b.find("testcase/error")
    assert error is not None and error.get("message") == "pytest exit 4"


def test_a_board_whose_provisioning_fails_is_bad_and_its_tests_skipped(tmp_path: Path) -> None:
    from fleet.lab.simrelease import make_release

    fleet("keys", "generate", "--out", tmp_path / "keys", "--name", "release")
    release = make_release(tmp_path / "r1", tmp_path / "keys/release.sec", 1)
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
    lab = tmp_path / "lab.toml"
    lab.write_text(
        '[lab]\nname = "gone"\n\n[[board]]\nname = "far"\nprofile = "qemu-virt-arm64"\n\n'
        '[board.resources]\nnetwork = { address = "127.0.0.1", ssh_port = 9 }\n\n'
        '[board.drivers]\npower = "manual"\nconsole = "none"\nprovision = "update"\n'
    )
    out = tmp_path / "out.xml"
    proc = fleet("hil", "run", REPO / "hardware-in-loop/suites/smoke", "--lab", lab,
                 "--release", release, "--trust", tmp_path / "keys/release.pub",
                 "--junit", out, "--results", tmp_path / "results", "--identity", key,
                 "--trust-new-host", check=False,
                 env={"FLEET_HIL_LOCKS": str(tmp_path / "locks")})
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "far: 0 passed, 0 failed, 0 errors, 5 skipped" in proc.stdout
    assert "; bad: provisioning failed: update to 1.0.0: root@127.0.0.1:9: unreachable: " in (
        proc.stdout
    )
    bad = (tmp_path / "results/far/bad").read_text()
    assert bad.startswith("provisioning failed: "), bad
    skips = [c.find("skipped") for c in ET.parse(out).getroot().iter("testcase")]
    reasons = [s.get("message", "") if s is not None else "" for s in skips]
    # The board's one test it matches is skipped for the bad board; the others (app-http,
    # shell, console) match no board of this lab.
    assert reasons[0].startswith("board far is bad for this run: provisioning failed: "), reasons
    assert reasons[1:] == ["no board of the lab matches this test's markers"] * 4, reasons
