"""Disks for the provisioning tests: a small image shaped like fleet's, and another
program holding a device exclusively, as an automounter or a second flasher would."""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

MiB = 1 << 20
P1_START = 2048  # sectors


def make_disk(path: Path) -> Path:
    """A small disk shaped like fleet's: FAT partition 1 (with boot state beside the
    settings, which provisioning must keep), then a Linux partition."""
    with open(path, "wb") as handle:
        handle.truncate(24 * MiB)
    subprocess.run(
        ["sfdisk", "-q", str(path)],
        input=f"label: dos\nstart={P1_START}, size={16 * 2048}, type=c\nsize=8192, type=83\n",
        text=True, check=True,
    )
    subprocess.run(
        ["mkfs.vfat", "-n", "FIRMWARE", "--offset", str(P1_START), str(path), str(16 * 1024)],
        check=True, capture_output=True,
    )
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    image = f"{path}@@{P1_START * 512}"
    subprocess.run(["mmd", "-i", image, "::/fleet"], check=True, env=env)
    state = path.parent / "bootstate.txt"
    state.write_text("fleet_default=A\n")
    subprocess.run(["mcopy", "-i", image, state, "::/fleet/bootstate.txt"], check=True, env=env)
    return path


def sha(path: Path | str) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


@contextlib.contextmanager
def held_by_another_program(node: str) -> Iterator[None]:
    """Another program (an automounter, a second flasher) holding the device exclusively."""
    holder = subprocess.Popen(
        [sys.executable, "-c",
         f"import os,sys; os.open({node!r}, os.O_RDONLY | os.O_EXCL); print('held', flush=True);"
         " sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        yield
    finally:
        holder.communicate("", timeout=10)


def only_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]
