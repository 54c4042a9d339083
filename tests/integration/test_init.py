"""``fleet init``: the scaffolded app loads, builds for the host and answers HTTP."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from app_server import serving
from typer.testing import CliRunner

from fleet.cli.main import register
from fleet.image.app import build_app
from fleet.project import load_project

pytestmark = pytest.mark.integration

FLEET = Path(sys.executable).parent / "fleet"


@pytest.fixture(scope="session")
def go_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.getbasetemp() / "go-cache"


def fleet(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([FLEET, *map(str, args)], capture_output=True, text=True)


@pytest.mark.parametrize("language", ["c", "go"])
def test_init_makes_an_app_that_builds_and_runs(
    language: str, tmp_path: Path, go_cache: Path
) -> None:
    folder = tmp_path / "My_Service"
    result = CliRunner().invoke(register(), ["init", str(folder), "--language", language])
    assert result.exit_code == 0, result.output
    assert f"created app my-service ({language})" in result.output

    project = load_project(folder)
    assert (project.name, project.version, project.port) == ("my-service", "1.0.0", 8080)
    assert project.run == "/app/bin/my-service"
    assert project.build.output == "my-service"
    assert project.health.http == "/health"

    program = build_app(project, "aarch64", tmp_path / "work", host=True, cache=go_cache)
    with serving(program) as server:
        assert server.get("/health") == (200, "ok\n")
        assert server.get("/version") == (200, "1.0.0\n")
    assert server.log[0].startswith("my-service 1.0.0 listening on 127.0.0.1:")


def test_init_json_and_name(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        register(), ["init", str(tmp_path / "x"), "--name", "svc", "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {
        "project": str(tmp_path / "x"),
        "name": "svc",
        "language": "c",
        "files": ["fleet.toml", "src/hello.c"],
    }
    assert load_project(tmp_path / "x").name == "svc"


def test_init_keeps_unrelated_files_but_refuses_to_overwrite(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("mine\n")
    assert fleet("init", tmp_path, "--name", "ok").returncode == 0
    assert (tmp_path / "README.md").read_text() == "mine\n"

    again = fleet("init", tmp_path, "--name", "ok")
    assert again.returncode == 2
    assert (
        again.stderr
        == f"fleet: error: {tmp_path} already has a fleet.toml; refusing to overwrite it\n"
    )

    other = tmp_path / "other"
    (other / "src").mkdir(parents=True)
    (other / "src/hello.c").write_text("/* my code */\n")
    clash = fleet("init", other)
    assert clash.returncode == 2
    assert clash.stderr == (
        f"fleet: error: {other / 'src/hello.c'} already exists; refusing to overwrite it\n"
    )
    assert (other / "src/hello.c").read_text() == "/* my code */\n"
    assert not (other / "fleet.toml").exists()


def test_init_refuses_a_bad_name_and_leaves_nothing(tmp_path: Path) -> None:
    result = fleet("init", tmp_path / "new" / "app", "--name", "Bad Name")
    assert result.returncode == 2
    assert result.stderr.startswith("fleet: error: cannot make an app named 'Bad Name': ")
    assert not (tmp_path / "new").exists()


def test_init_refuses_an_unknown_language(tmp_path: Path) -> None:
    result = fleet("init", tmp_path / "a", "--language", "rust")
    assert result.returncode == 2
    assert result.stderr == "fleet: error: unknown language 'rust': choose one of c, go\n"
    assert not (tmp_path / "a").exists()
