"""fleet.toml is outside input: every defect is one clear line naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet.errors import ConfigError
from fleet.project import load_project
from tests.conftest import EXAMPLES

pytestmark = pytest.mark.unit


def _project(tmp_path: Path, old: str, new: str) -> Path:
    text = (EXAMPLES / "hello-c" / "fleet.toml").read_text()
    assert old in text
    (tmp_path / "fleet.toml").write_text(text.replace(old, new, 1))
    return tmp_path


def test_examples_load() -> None:
    c = load_project(EXAMPLES / "hello-c")
    assert (c.name, c.version, c.release_number, c.port) == ("hello-c", "1.0.0", 1, 8080)
    assert c.health.http == "/health"
    assert (c.health.timeout_s, c.health.max_exits) == (60, 3)
    go = load_project(EXAMPLES / "hello-go")
    assert go.build.language == "go"


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('name = "hello-c"', 'name = "Hello C"', "field 'app.name'"),
        ("release = 1", "release = 0", "field 'app.release': must be at least 1"),
        ('language = "c"', 'language = "rust"', "field 'build.language': expected one of"),
        ("port = 8080", "port = 70000", "field 'run.port': must be at most 65535"),
        ('http = "/health"', 'http = "health"', "must be a path starting with '/'"),
        ('http = "/health"', 'http = "/h"\ncommand = "true"', "give exactly one of"),
        ('output = "hello-c"', 'output = "../x"', "field 'build.output'"),
        ("max_exits = 3", "max_exits = -1", "field 'health.max_exits': must be at least 0"),
        ("max_exits = 3", 'max_exits = "3"', "field 'health.max_exits'"),
    ],
)
def test_bad_fields_are_named(tmp_path: Path, old: str, new: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_project(_project(tmp_path, old, new))
    assert str(tmp_path / "fleet.toml") in str(caught.value)
    assert message in str(caught.value)


def test_missing_file_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="fleet init"):
        load_project(tmp_path)
