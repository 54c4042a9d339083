"""fleet installed the way a user installs it: a wheel built from the checkout, put into
a fresh virtual environment outside the checkout, run from a folder that is not the
checkout. Its board profiles, example apps and on-board files come from the wheel."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def _run(
    cmd: list[str | Path], cwd: Path, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    # Nothing of the checkout or of the test's own environment may leak into the child.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "FLEET_", "VIRTUAL"))}
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if not p.startswith(str(REPO))
    )
    return subprocess.run(
        [str(c) for c in cmd],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The `fleet` command of a fresh venv that holds fleet's wheel and nothing else of it."""
    base = tmp_path_factory.mktemp("wheel")
    # Build from a copy of what git would ship, so the build leaves nothing in the
    # checkout and nothing untracked (out/, caches, egg-info) sneaks into the wheel.
    listed = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    source = base / "source"
    for name in filter(None, listed):
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    dist = base / "dist"
    _ok(_run([sys.executable, "-m", "pip", "wheel", source, "--no-deps", "-w", dist], base))
    wheels = list(dist.glob("fleet-*.whl"))
    assert len(wheels) == 1, wheels
    venv = base / "venv"
    _ok(_run([sys.executable, "-m", "venv", venv], base))
    _ok(_run([venv / "bin" / "python", "-m", "pip", "install", "-q", wheels[0]], base))
    return venv / "bin" / "fleet"


def test_installed_fleet_lists_boards_inits_and_builds_for_the_host(
    installed: Path, tmp_path: Path
) -> None:
    listed = _ok(_run([installed, "boards"], tmp_path))
    names = [line.split()[0] for line in listed.splitlines() if line.strip()]
    for board in ("qemu-virt-arm64", "rpi3b", "rpi4b", "rpi5", "cm4", "zero2w"):
        assert board in names, listed
    shown = _ok(_run([installed, "boards", "show", "rpi4b"], tmp_path))
    assert "boot_method: uboot-ab" in shown and "rpi_arm64" in shown

    _ok(_run([installed, "init", "myapp"], tmp_path))
    assert (tmp_path / "myapp" / "fleet.toml").is_file()
    assert 'name = "myapp"' in (tmp_path / "myapp" / "fleet.toml").read_text()

    built = _ok(_run([installed, "build", "--host", "--project", "myapp"], tmp_path))
    assert built.startswith("built "), built
    program = Path(built.split()[1])
    assert program.is_file() and os.access(program, os.X_OK)
    assert str(REPO) not in built


def test_installed_fleet_ships_the_on_board_files(installed: Path, tmp_path: Path) -> None:
    python = installed.with_name("python")
    code = (
        "from fleet.image import rootfs, initramfs, device_tools, bootscript\n"
        "for path in (rootfs.DEVICE_DIR / 'agent', initramfs.INIT, "
        "device_tools.DEVICE_DIR / 'fleet-reboot.c', bootscript.DEVICE_DIR / 'inittab'):\n"
        "    assert path.is_file(), path\n"
        "    print(path)\n"
    )
    shown = _ok(_run([python, "-c", code], tmp_path))
    assert str(REPO) not in shown and "site-packages" in shown, shown


def test_no_board_profiles_is_a_one_line_error(tmp_path: Path) -> None:
    env = {**os.environ, "FLEET_BOARDS_DIR": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "fleet.cli.main", "boards"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert proc.returncode != 0
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fleet: error: "), proc.stderr
    assert str(tmp_path) in lines[0]
