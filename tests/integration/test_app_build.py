"""Building the example apps: for the host (then run and asked over HTTP), and for the
boards' ARM architectures, reproducibly."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from app_server import serving

from fleet import REPO_ROOT
from fleet.errors import BuildError, ConfigError
from fleet.image import elf
from fleet.image.app import build_app
from fleet.project import Project, load_project

pytestmark = pytest.mark.integration

EXAMPLES = REPO_ROOT / "examples"


@pytest.fixture(scope="session")
def go_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # One Go build cache for the whole run: the standard library compiles once.
    return tmp_path_factory.getbasetemp() / "go-cache"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def copy_example(name: str, where: Path) -> Project:
    shutil.copytree(EXAMPLES / name, where)
    return load_project(where)


@pytest.mark.parametrize("example", ["hello-c", "hello-go"])
def test_host_build_serves_health_and_version(example: str, tmp_path: Path, go_cache: Path) -> None:
    project = load_project(EXAMPLES / example)
    program = build_app(project, "aarch64", tmp_path, host=True, cache=go_cache)
    assert program == tmp_path / "app-host" / example

    with serving(program) as server:
        assert server.get("/health") == (200, "ok\n")
        assert server.get("/version") == (200, "1.0.0\n")
        assert server.get("/health?probe=1") == (200, "ok\n")
        assert server.get("/nope")[0] == 404
        # Garbage, silence and floods must not take the service down.
        assert server.raw(b"\x00\xff\xfe garbage\r\n\r\n").startswith(b"HTTP/1.")
        server.raw(b"")
        server.raw(b"GET /" + b"A" * 20000)
        server.raw(b"GET /health HTTP/1.0\r\n" + b"X-Junk: \x01\x02\x7f\r\n" * 50 + b"\r\n")
        for _ in range(100):
            assert server.get("/health") == (200, "ok\n")
    logged = [line for line in server.log if "/health" in line and "200" in line]
    assert len(logged) >= 102

    with serving(program, {"FLEET_APP_VERSION": "2.5.0-board"}) as server:
        assert server.get("/version") == (200, "2.5.0-board\n")


@pytest.mark.parametrize(
    ("example", "arch", "machine", "bits"),
    [
        ("hello-c", "aarch64", "AArch64", 64),
        ("hello-c", "armhf", "ARM", 32),
        ("hello-go", "aarch64", "AArch64", 64),
    ],
)
def test_cross_build_is_reproducible(
    example: str, arch: str, machine: str, bits: int, tmp_path: Path
) -> None:
    # Different project folders, output folders and (for Go) cold build caches: none of
    # them may leak into the program's bytes.
    one = build_app(
        copy_example(example, tmp_path / "a" / example),
        arch,
        tmp_path / "w1",
        cache=tmp_path / "c1",
    )
    two = build_app(
        copy_example(example, tmp_path / "b" / "elsewhere"),
        arch,
        tmp_path / "w2",
        cache=tmp_path / "c2",
    )
    assert sha(one) == sha(two)
    built = elf.read(one)
    assert (built.machine_name, built.bits) == (machine, bits)
    assert elf.fits(built, arch)
    if example == "hello-c":
        assert built.needed == ("libc.so.6",)
        assert bytes(str(tmp_path), "utf-8") not in one.read_bytes()
    else:
        assert built.interpreter is None and built.needed == ()


def test_go_build_for_armhf(tmp_path: Path, go_cache: Path) -> None:
    program = build_app(load_project(EXAMPLES / "hello-go"), "armhf", tmp_path, cache=go_cache)
    built = elf.read(program)
    assert (built.machine_name, built.bits, built.interpreter) == ("ARM", 32, None)


def write_project(root: Path, build: str, files: dict[str, str]) -> Project:
    root.mkdir(parents=True, exist_ok=True)
    (root / "fleet.toml").write_text(
        '[app]\nname = "t"\nversion = "0.1"\nrelease = 1\n'
        f"[build]\n{build}\n"
        '[run]\ncommand = "/app/bin/t"\nport = 8080\n[health]\nhttp = "/health"\n'
    )
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return load_project(root)


def test_c_compile_error_names_the_first_error(tmp_path: Path) -> None:
    project = write_project(
        tmp_path / "p",
        'language = "c"\nsources = ["*.c"]\noutput = "t"',
        {"main.c": "int main(void)\n{\n    return undefined_thing + other_thing;\n}\n"},
    )
    with pytest.raises(BuildError) as info:
        build_app(project, "aarch64", tmp_path / "w")
    message = str(info.value)
    assert message.startswith("t: build failed (aarch64-linux-gnu-gcc, exit 1): ")
    assert "main.c:3:12: error: 'undefined_thing' undeclared" in message
    assert "other_thing" not in message
    assert not (tmp_path / "w/app-aarch64/t").exists()


def test_go_compile_error_names_the_first_error(tmp_path: Path, go_cache: Path) -> None:
    project = write_project(
        tmp_path / "p",
        'language = "go"\nsources = ["*.go"]\noutput = "t"',
        {
            "go.mod": "module t\n\ngo 1.19\n",
            "main.go": "package main\n\nfunc main() {\n\tnotDefined()\n}\n",
        },
    )
    with pytest.raises(BuildError, match=r"main\.go:4:2: undefined: notDefined"):
        build_app(project, "aarch64", tmp_path / "w", cache=go_cache)


def test_command_recipe_gets_the_cross_compiler(tmp_path: Path) -> None:
    project = write_project(
        tmp_path / "p",
        'language = "command"\nsources = ["src/*.c"]\noutput = "t"\n'
        'command = "$CC $CFLAGS -o \\"$OUT\\" src/hello.c '
        '&& test $TARGET_TRIPLE = arm-linux-gnueabihf && test $GOARCH = arm && test $GOARM = 7"',
        {"src/hello.c": (EXAMPLES / "hello-c/src/hello.c").read_text()},
    )
    program = build_app(project, "armhf", tmp_path / "w")
    built = elf.read(program)
    assert (built.machine_name, built.interpreter) == ("ARM", "/lib/ld-linux-armhf.so.3")


def test_command_recipe_that_builds_for_the_host_is_refused(tmp_path: Path) -> None:
    project = write_project(
        tmp_path / "p",
        'language = "command"\nsources = ["*.c"]\noutput = "t"\n'
        'command = "cc -o \\"$OUT\\" main.c"',
        {"main.c": "int main(void) { return 0; }\n"},
    )
    with pytest.raises(BuildError) as info:
        build_app(project, "aarch64", tmp_path / "w")
    assert str(info.value) == "t: the build made t for x86-64, but aarch64 was asked for"


def test_recipe_that_writes_nothing_is_refused(tmp_path: Path) -> None:
    project = write_project(
        tmp_path / "p",
        'language = "command"\nsources = ["*.c"]\noutput = "t"\ncommand = "true"',
        {"main.c": ""},
    )
    with pytest.raises(BuildError, match=r"the build recipe did not write \$OUT"):
        build_app(project, "aarch64", tmp_path / "w")


def test_sources_that_match_nothing_are_named(tmp_path: Path) -> None:
    project = write_project(tmp_path / "p", 'language = "c"\nsources = ["src/*.c"]', {})
    with pytest.raises(BuildError, match=r"build.sources pattern 'src/\*\.c' matches no file"):
        build_app(project, "aarch64", tmp_path / "w")


def test_missing_recipe_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"build\.command"):
        write_project(tmp_path / "p", 'language = "command"\nsources = []', {})
