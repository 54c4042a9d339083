"""Virtual boards boot the real images through real U-Boot: the app answers through the
forwarded port, the console shows the boot, SSH reaches the board."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import Built, copy_example, fleet

pytestmark = pytest.mark.virtual


def http_get(port: int, path: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
                return reply.read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def wait_for_console(log: Path, text: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        content = log.read_text(errors="replace") if log.exists() else ""
        if text in content:
            return content
        time.sleep(0.5)
    raise AssertionError(f"{text!r} not on the console after {timeout} s; last lines:\n"
                         + "\n".join(content.splitlines()[-15:]))


def build_copy(
    tmp_path_factory: pytest.TempPathFactory, hello_virt: Built, example: str, board: str
) -> Path:
    """Build a private copy of an example for ``board`` with the session's pins and key;
    returns the disk image."""
    base = tmp_path_factory.mktemp(f"{example}-{board}")
    app = copy_example(example, base / "app", lock_from=hello_virt.app)
    fleet("build", "--board", board, "--project", app, "--out", base / "out",
          "--key", hello_virt.key, "--dev")
    return base / "out" / "disk.img"


def test_virt_board_boots_to_the_app(hello_virt: Built) -> None:
    up = json.loads(fleet("lab", "up", "--board", "qemu-virt-arm64", "--disk", hello_virt.disk,
                          "--name", "boot-virt", "--json").stdout)
    try:
        assert http_get(up["app_port"], "/version").strip() == "1.0.0"
        assert http_get(up["app_port"], "/health").strip() == "ok"
        console = wait_for_console(Path(up["console_log"]), "fleet: app healthy", 60)
        assert "fleet: booting slot A" in console  # U-Boot ran fleet's boot script
        slot = fleet("lab", "ssh", "boot-virt", "--", "cat", "/run/fleet/slot")
        assert slot.stdout.strip() == "A"
        listed = json.loads(fleet("lab", "list", "--json").stdout)
        assert [b["state"] for b in listed if b["name"] == "boot-virt"] == ["running"]
    finally:
        fleet("lab", "down", "boot-virt")


def test_go_app_image_boots_and_answers(
    tmp_path_factory: pytest.TempPathFactory, hello_virt: Built
) -> None:
    disk = build_copy(tmp_path_factory, hello_virt, "hello-go", "qemu-virt-arm64")
    up = json.loads(fleet("lab", "up", "--board", "qemu-virt-arm64", "--disk", disk,
                          "--name", "boot-go", "--json").stdout)
    try:
        assert http_get(up["app_port"], "/version").strip() == "1.0.0"
        wait_for_console(Path(up["console_log"]), "fleet: app healthy: hello-go 1.0.0", 60)
    finally:
        fleet("lab", "down", "boot-go")
