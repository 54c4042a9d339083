"""One JUnit XML file from the per-board files pytest wrote: a test suite per board, its
test cases named BOARD::TEST, so a CI's test view shows which board failed what."""

from __future__ import annotations

import xml.etree.ElementTree as ET  # files pytest wrote here, not from outside
from dataclasses import dataclass
from pathlib import Path

from fleet import atomic


@dataclass(frozen=True)
class Counts:
    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0

    @property
    def total(self) -> int:
        return self.passed + self.failed + self.errors + self.skipped


def counts(suite: ET.Element) -> Counts:
    passed = failed = errors = skipped = 0
    for case in suite.iter("testcase"):
        if case.find("failure") is not None:
            failed += 1
        elif case.find("error") is not None:
            errors += 1
        elif case.find("skipped") is not None:
            skipped += 1
        else:
            passed += 1
    return Counts(passed, failed, errors, skipped)


def _suite_of(path: Path, board: str, problem: str) -> ET.Element:
    """The board's suite from pytest's file, or a suite of one error when there is none
    (pytest did not start, or died): a board is never silently missing from the report."""
    try:
        root = ET.parse(path).getroot()  # noqa: S314
    except (OSError, ET.ParseError) as exc:
        suite = ET.Element("testsuite", name=board)
        case = ET.SubElement(suite, "testcase", classname=board, name=f"{board}::run")
        ET.SubElement(case, "error", message=problem or f"no JUnit file: {exc}")
        return suite
    found = root if root.tag == "testsuite" else root.find("testsuite")
    suite = ET.Element("testsuite", name=board)
    for case in found.iter("testcase") if found is not None else []:
        case.set("classname", f"{board}.{case.get('classname', '')}".rstrip("."))
        case.set("name", f"{board}::{case.get('name', '')}")
        suite.append(case)
    return suite


def merge(parts: dict[str, tuple[Path, str]], out: Path) -> dict[str, Counts]:
    """``parts``: board -> (its pytest JUnit file, why it may be missing). Writes ``out``
    and returns each board's counts."""
    root = ET.Element("testsuites", name="fleet hil run")
    found: dict[str, Counts] = {}
    for board, (path, problem) in sorted(parts.items()):
        suite = _suite_of(path, board, problem)
        c = counts(suite)
        suite.set("tests", str(c.total))
        suite.set("failures", str(c.failed))
        suite.set("errors", str(c.errors))
        suite.set("skipped", str(c.skipped))
        root.append(suite)
        found[board] = c
    ET.indent(root)
    atomic.write_bytes(out, ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n")
    return found
