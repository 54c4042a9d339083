"""Small release folders for the trust tests: real manifest bytes, real payload files."""

from __future__ import annotations

import hashlib
from pathlib import Path

from fleet.release import Health, Manifest, Payload, write_manifest


def make_release(
    folder: Path,
    *,
    release: int = 7,
    board: str = "qemu-virt-arm64",
    boot: bytes = b"boot partition bytes\n" * 10,
    rootfs: bytes = b"rootfs bytes\n" * 50,
) -> Manifest:
    folder.mkdir(parents=True, exist_ok=True)
    payloads = []
    for name, file, data in (("boot", "boot.vfat", boot), ("rootfs", "rootfs.squashfs", rootfs)):
        (folder / file).write_bytes(data)
        payloads.append(Payload(name, file, len(data), hashlib.sha256(data).hexdigest()))
    manifest = Manifest(
        app="hello",
        version="1.2.3",
        release=release,
        board=board,
        arch="aarch64",
        payloads=tuple(payloads),
        health=Health(http="http://127.0.0.1:8080/health", command=None, port=8080, timeout=60),
        inputs={"source": "examples/hello-c"},
    )
    write_manifest(folder, manifest)
    return manifest
