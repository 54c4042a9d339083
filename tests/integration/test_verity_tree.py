"""fleet's own dm-verity hash tree against the real peer, Debian's veritysetup: the same
root hash and tree bytes for the same salt, and `veritysetup verify` accepts the rootfs
payload of a real build with the parameters the slot's initramfs and manifest carry."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from fleet.errors import ReleaseError
from fleet.image import initramfs, verity
from fleet.release import manifest_from_bytes
from signing.canonical import canonical_bytes
from tests.conftest import Built

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("veritysetup") is None, reason="cryptsetup-bin not installed"),
]

COMMON = ["--no-superblock", "--format=1", "--hash=sha256", "--data-block-size=4096",
          "--hash-block-size=4096"]


def veritysetup(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["veritysetup", *map(str, args)], capture_output=True, text=True,
                          check=check)


def verify(payload: Path, params: verity.Verity) -> subprocess.CompletedProcess[str]:
    return veritysetup("verify", *COMMON, f"--data-blocks={params.data_blocks}",
                       f"--hash-offset={params.hash_offset}", f"--salt={params.salt}",
                       payload, payload, params.root_hash, check=False)


# 1 block (no tree), a partial last block, 2 levels, 3 levels (128 * 128 + 1 blocks)
@pytest.mark.parametrize("size", [4096, 100 * 4096 + 17, 129 * 4096, (128 * 128 + 1) * 4096])
def test_tree_matches_veritysetup(tmp_path: Path, size: int) -> None:
    data = random.Random(size).randbytes(size)
    salt = random.Random(-size).randbytes(32)
    payload = tmp_path / "payload"
    payload.write_bytes(data)
    params = verity.append_hash_tree(payload, salt)

    padded = tmp_path / "padded"
    padded.write_bytes(data + bytes(-size % 4096))
    tree = tmp_path / "tree"
    made = veritysetup("format", *COMMON, f"--salt={salt.hex()}", padded, tree)
    root = [line.split()[-1] for line in made.stdout.splitlines() if line.startswith("Root hash")]
    assert root == [params.root_hash]
    assert params.data_blocks == -(-size // 4096)
    assert params.hash_offset == padded.stat().st_size
    assert payload.read_bytes() == padded.read_bytes() + tree.read_bytes()
    assert verify(payload, params).returncode == 0


def test_veritysetup_catches_a_flipped_bit_in_data_or_tree(tmp_path: Path) -> None:
    payload = tmp_path / "payload"
    payload.write_bytes(random.Random(1).randbytes(300 * 4096))
    params = verity.append_hash_tree(payload)
    good = payload.read_bytes()
    for offset in (5, 299 * 4096 + 100, params.hash_offset + 7):
        bad = bytearray(good)
        bad[offset] ^= 0x10
        payload.write_bytes(bytes(bad))
        assert verify(payload, params).returncode != 0, offset


def test_salt_is_reproducible_and_follows_the_data(tmp_path: Path) -> None:
    data = random.Random(2).randbytes(50 * 4096)
    outputs = []
    for name in ("one", "two"):
        path = tmp_path / name
        path.write_bytes(data)
        outputs.append((verity.append_hash_tree(path), path.read_bytes()))
    assert outputs[0] == outputs[1]
    other = tmp_path / "other"
    other.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    assert verity.append_hash_tree(other).salt != outputs[0][0].salt


def initramfs_verity(release: Path, tmp: Path) -> dict[str, str]:
    initrd = subprocess.run(["mtype", "-i", release / "boot.vfat", "::/initrd.zst"],
                            capture_output=True, check=True).stdout
    tree = tmp / "initramfs"
    tree.mkdir()
    subprocess.run(["cpio", "-idm", "--quiet"], input=initramfs.decompress(initrd), cwd=tree,
                   check=True)
    assert (tree / "bin/fleet-verity").is_file()
    lines = (tree / "etc/verity").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines)


def test_built_rootfs_payload_is_verified_by_veritysetup(hello_virt: Built, tmp_path: Path) -> None:
    release = hello_virt.release
    payload = release / "rootfs.squashfs"
    manifest = json.loads((release / "manifest.json").read_text())
    doc = manifest["verity"]
    params = verity.Verity(root_hash=doc["root_hash"], salt=doc["salt"],
                           data_blocks=doc["data_blocks"], hash_offset=doc["hash_offset"],
                           block_size=doc["block_size"], algorithm=doc["algorithm"])
    assert (params.block_size, params.algorithm) == (4096, "sha256")
    # The slot's initramfs (inside the signed boot payload) maps the same tree.
    assert initramfs_verity(release, tmp_path) == {
        "root_hash": params.root_hash, "salt": params.salt,
        "data_blocks": str(params.data_blocks), "hash_start": str(params.hash_start_block),
        "block_size": "4096", "algorithm": "sha256",
    }
    assert verify(payload, params).returncode == 0
    # The squashfs ends where the tree starts, and the tree fills the rest.
    head = payload.read_bytes()[: params.hash_offset]
    squashfs = tmp_path / "only.squashfs"
    squashfs.write_bytes(head)
    tree = tmp_path / "tree"
    made = veritysetup("format", *COMMON, f"--salt={params.salt}", squashfs, tree)
    assert f"Root hash:      \t{params.root_hash}" in made.stdout
    assert payload.stat().st_size == params.hash_offset + tree.stat().st_size
    # A flipped byte in the squashfs is refused.
    bad = tmp_path / "bad"
    data = bytearray(payload.read_bytes())
    data[params.hash_offset // 2] ^= 1
    bad.write_bytes(bytes(data))
    assert verify(bad, params).returncode != 0


@pytest.mark.parametrize(("change", "words"), [
    ({"extra": 1}, "unknown field verity.extra"),
    ({"block_size": 512}, "4096-byte blocks"),
    ({"algorithm": "sha1"}, "sha256"),
    ({"root_hash": "AB" * 32}, "root_hash"),
    ({"salt": "abc"}, "salt"),
    ({"hash_offset": 4096}, "hash_offset"),
    ({"data_blocks": 1, "hash_offset": 4096}, "does not describe the rootfs payload"),
])
def test_manifest_refuses_a_verity_object_that_does_not_fit(
    hello_virt: Built, change: dict[str, object], words: str
) -> None:
    doc = json.loads((hello_virt.release / "manifest.json").read_text())
    manifest_from_bytes(canonical_bytes(doc))  # as built: accepted
    doc["verity"].update(change)
    with pytest.raises(ReleaseError, match=words):
        manifest_from_bytes(canonical_bytes(doc))
