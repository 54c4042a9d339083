"""Shared fixtures: the fleet command, an isolated lab folder, and the example app built
once per test session (the build is real and takes about 15 s)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"

# For tests that boot QEMU with Debian's U-Boot: skipped where those are not installed.
NEEDS_QEMU = pytest.mark.skipif(
    shutil.which("qemu-system-aarch64") is None
    or not Path("/usr/lib/u-boot/qemu_arm64/u-boot.bin").exists(),
    reason="qemu-system-arm / u-boot-qemu not installed",
)


def fleet(*args: str | Path, check: bool = True, timeout: float = 900,
          env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the fleet command as a user would and return what it printed."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-m", "fleet.cli.main", *map(str, args)],
        capture_output=True, text=True, timeout=timeout, env=full_env, check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"fleet {' '.join(map(str, args))} exited {proc.returncode}\n"
            f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


def _utf8(value: object) -> object:
    """``value`` with every string made UTF-8 encodable (a lone surrogate written out as
    ``\\udcXX``)."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {key: _utf8(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_utf8(item) for item in value)
    return value


@pytest.hookimpl(wrapper=True)
def pytest_report_to_serializable(
    config: pytest.Config, report: pytest.TestReport | pytest.CollectReport
) -> Generator[None, dict[str, object], dict[str, object]]:
    """A report goes from a pytest-xdist worker to the controller through execnet, which
    refuses a string that is not UTF-8 encodable (a lone surrogate, as a file name or a
    board's output decoded with surrogateescape carries): the worker then ends with an
    INTERNALERROR, its remaining tests are never run and the reason is lost. Such text is
    escaped here so the test's own result (its failure, its captured log) gets through."""
    data = yield
    return {key: _utf8(item) for key, item in data.items()}


@pytest.fixture(scope="session", autouse=True)
def _isolated_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Keep the tests' virtual boards apart from the user's, and stop them at the end."""
    lab = tmp_path_factory.mktemp("lab")
    old = os.environ.get("FLEET_LAB_DIR")
    os.environ["FLEET_LAB_DIR"] = str(lab)
    # The releases the tests build and send are kept apart from the user's too.
    os.environ["FLEET_STORE"] = str(tmp_path_factory.mktemp("store"))
    yield lab
    from fleet import lab as fleet_lab

    for board in fleet_lab.list_boards():
        fleet_lab.down(board.name)
    if old is None:
        os.environ.pop("FLEET_LAB_DIR", None)
    else:
        os.environ["FLEET_LAB_DIR"] = old


def copy_example(name: str, dest: Path, version: str | None = None,
                 release: int | None = None, lock_from: Path | None = None,
                 edits: dict[str, str] | None = None) -> Path:
    """A private copy of an example app. Its fleet.lock is left out (the build resolves
    afresh) unless ``lock_from`` names a built project whose pins to reuse, so that
    nothing is resolved again. ``edits`` replaces other text of its fleet.toml."""
    shutil.copytree(EXAMPLES / name, dest, ignore=shutil.ignore_patterns("fleet.lock"))
    if lock_from is not None:
        shutil.copy(lock_from / "fleet.lock", dest / "fleet.lock")
    changes = dict(edits or {})
    if version is not None:
        changes['version = "1.0.0"'] = f'version = "{version}"'
    if release is not None:
        changes["release = 1\n"] = f"release = {release}\n"
    toml = dest / "fleet.toml"
    text = toml.read_text()
    for old, new in changes.items():
        text = text.replace(old, new)
    toml.write_text(text)
    return dest


@dataclass(frozen=True)
class Built:
    app: Path
    out: Path
    key: Path
    pub: Path

    @property
    def release(self) -> Path:
        return self.out / "release"

    @property
    def disk(self) -> Path:
        return self.out / "disk.img"


@pytest.fixture(scope="session")
def release_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    keys = tmp_path_factory.mktemp("keys")
    fleet("keys", "generate", "--out", keys, "--name", "release")
    # The pull mode's online timestamp key, beside it: the images pin its public half.
    fleet("keys", "generate", "--out", keys, "--name", "timestamp")
    return keys / "release.sec", keys / "release.pub"


def timestamp_key(release_pub: Path) -> tuple[Path, Path]:
    return release_pub.with_name("timestamp.sec"), release_pub.with_name("timestamp.pub")


def with_pull(app: Path, release_pub: Path, extra: str = "") -> Path:
    """The app's fleet.toml with a [pull] section pinning the tests' timestamp key (no
    URL: a board pulls only once provisioning gives it one), and ``extra`` lines."""
    toml = app / "fleet.toml"
    pub = timestamp_key(release_pub)[1]
    toml.write_text(toml.read_text() + f'\n[pull]\ntimestamp_keys = ["{pub}"]\n{extra}')
    return app


@pytest.fixture(scope="session")
def hello_virt(tmp_path_factory: pytest.TempPathFactory, release_key: tuple[Path, Path]) -> Built:
    """examples/hello-c built and signed for qemu-virt-arm64, as a development image (the
    lab's shell key gets in, so tests can look around on the board), pinning the tests'
    timestamp key for pull mode."""
    base = tmp_path_factory.mktemp("hello-virt")
    app = with_pull(copy_example("hello-c", base / "app"), release_key[1])
    out = base / "out"
    fleet("build", "--board", "qemu-virt-arm64", "--project", app, "--out", out,
          "--key", release_key[0], "--dev")
    return Built(app, out, *release_key)


@pytest.fixture(scope="session")
def hello_v2_virt(tmp_path_factory: pytest.TempPathFactory, hello_virt: Built) -> Path:
    """hello_virt's app as version 2.0.0 (release 2), signed by the same key: the release
    an update or a rollout takes the boards to."""
    base = tmp_path_factory.mktemp("hello-v2")
    app = with_pull(copy_example(
        "hello-c", base / "app", version="2.0.0", release=2, lock_from=hello_virt.app
    ), hello_virt.pub)
    fleet("build", "--board", "qemu-virt-arm64", "--project", app, "--out", base / "out",
          "--key", hello_virt.key, "--dev")
    return base / "out" / "release"
