"""Small signed releases for simulated boards: random payloads (a sim board runs no
kernel or rootfs from them), or a rootfs that tells the sim's app to fail its health check
(fleet.lab.simboot.UNHEALTHY_MARK)."""

from __future__ import annotations

import random
from pathlib import Path

from fleet.hashing import sha256_file
from fleet.lab.simboot import UNHEALTHY_MARK
from fleet.release import Health, Manifest, Payload, write_manifest
from fleet.trust import sign_release


def make_release(
    folder: Path,
    key: Path,
    number: int,
    *,
    board: str = "qemu-virt-arm64",
    size: int = 64 * 1024,
    healthy: bool = True,
    version: str | None = None,
    app: str = "sim",
) -> Path:
    """A release NUMBER (version NUMBER.0.0) of boot.img and rootfs.img, each SIZE +
    NUMBER bytes (the same bytes for the same arguments), signed by KEY (a .sec); with
    ``healthy=False`` its rootfs starts with UNHEALTHY_MARK, so a sim board's app fails."""
    folder.mkdir(parents=True)
    rng = random.Random(number * 7919 + size)
    payloads = []
    for name in ("boot", "rootfs"):
        path = folder / f"{name}.img"
        data = rng.randbytes(size + number)
        if name == "rootfs" and not healthy:
            data = UNHEALTHY_MARK + data[len(UNHEALTHY_MARK) :]
        path.write_bytes(data)
        payloads.append(Payload(name, path.name, path.stat().st_size, sha256_file(path)))
    manifest = Manifest(
        app=app,
        version=version or f"{number}.0.0",
        release=number,
        board=board,
        arch="aarch64",
        payloads=tuple(payloads),
        health=Health("/health", None, 8080, 30),
    )
    write_manifest(folder, manifest)
    sign_release(folder, key)
    return folder
