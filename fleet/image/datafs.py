"""The data partition's empty filesystem, made at build time.

A journaled ext4 from the host's e2fsprogs, so a board's first boot only mounts it: the
board's own mke2fs is busybox's, which makes an unjournaled ext2 and took about 1.5 s of
a virtual board's first boot. The board still makes one itself when it finds the
partition all zeros or is asked to recreate it (docs/provisioning.md).

The same release gives the same bytes: the UUID and directory hash seed come from the
release's own digest and every time stamp from the build's epoch. Boards flashed from
one image therefore share the data filesystem's UUID; nothing on a board mounts by UUID.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from fleet.run import run

LABEL = "fleet-data"


def make_data_fs(output: Path, size: int, mtime: int, seed: str) -> None:
    """An empty ext4 of ``size`` bytes at ``output``, owned by root, its identity from
    ``seed`` (any text: the release's digest)."""
    fs_uuid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"fleet-data:{seed}"))
    if output.exists():
        output.unlink()
    with output.open("wb") as handle:
        handle.truncate(size)
    run(
        [
            "mkfs.ext4",
            "-q",
            "-F",
            "-L",
            LABEL,
            "-U",
            fs_uuid,
            # lazy_itable_init: the board's kernel zeroes the inode tables after the first
            # mount, so the image carries (and a flash writes) only the metadata.
            "-E",
            f"hash_seed={fs_uuid},lazy_itable_init=1,nodiscard,root_owner=0:0",
            # Fixed at what every supported board's kernel (Debian's 6.1) mounts, whatever
            # the build host's mke2fs.conf enables.
            "-O",
            "^orphan_file,^metadata_csum_seed",
            output,
        ],
        env={"E2FSPROGS_FAKE_TIME": str(mtime)},
    )
