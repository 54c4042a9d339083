"""The one way fleet starts external programs: log the quoted command line, turn a
failure into a ``ProgramError`` whose message names the program and its last words."""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from fleet.errors import ProgramError

log = logging.getLogger("fleet.run")

# Which Debian package provides each program, so a missing one names its fix.
PACKAGES: dict[str, str] = {
    "mksquashfs": "squashfs-tools",
    "unsquashfs": "squashfs-tools",
    "mkfs.vfat": "dosfstools",
    "mcopy": "mtools",
    "mmd": "mtools",
    "sfdisk": "fdisk",
    "mkimage": "u-boot-tools",
    "mmdebstrap": "mmdebstrap",
    "qemu-system-aarch64": "qemu-system-arm",
    "qemu-img": "qemu-utils",
    "aarch64-linux-gnu-gcc": "gcc-aarch64-linux-gnu",
    "arm-linux-gnueabihf-gcc": "gcc-arm-linux-gnueabihf",
    "go": "golang-go",
    "bmaptool": "bmap-tools",
    "losetup": "mount",
    "mkfs.ext4": "e2fsprogs",
    "dpkg-deb": "dpkg",
    "apt-get": "apt",
    "cpio": "cpio",
    "signify-openbsd": "signify-openbsd",
    "rauc": "rauc",
    "ip": "iproute2",
}

Arg = str | Path


def which(program: str) -> str:
    """Absolute path of ``program`` or a ProgramError naming the package to install."""
    found = shutil.which(program) or shutil.which(program, path="/usr/sbin:/sbin")
    if found is None:
        package = PACKAGES.get(program)
        hint = f": install the Debian package {package} (make deps)" if package else ""
        raise ProgramError(f"{program} not found{hint}")
    return found


def quote(cmd: Sequence[Arg]) -> str:
    return " ".join(shlex.quote(str(part)) for part in cmd)


def run(
    cmd: Sequence[Arg],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    input: bytes | None = None,
    capture: bool = True,
    check: bool = True,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``cmd`` and return its result; on a non-zero exit raise ProgramError.

    ``env`` is added to the current environment (it does not replace it).
    """
    argv = [str(part) for part in cmd]
    argv[0] = which(argv[0]) if "/" not in argv[0] else argv[0]
    log.debug("run: %s", quote(cmd))
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    try:
        proc = subprocess.run(
            argv,
            cwd=cwd,
            env=full_env,
            input=input,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE if capture else None,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ProgramError(f"{Path(argv[0]).name} timed out after {timeout} s") from exc
    except OSError as exc:
        raise ProgramError(f"cannot start {argv[0]}: {exc.strerror}") from exc
    if check and proc.returncode != 0:
        raise ProgramError(_failure_message(cmd, proc))
    return proc


def _failure_message(cmd: Sequence[Arg], proc: subprocess.CompletedProcess[bytes]) -> str:
    name = Path(str(cmd[0])).name
    words = (proc.stderr or b"").decode(errors="replace").strip().splitlines()
    if not words:
        words = (proc.stdout or b"").decode(errors="replace").strip().splitlines()
    last = words[-1].strip() if words else "no output"
    return f"{name} failed (exit {proc.returncode}): {last} [command: {quote(cmd)}]"
