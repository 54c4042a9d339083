"""dm-verity on a real QEMU virt board (issue 10, item 6): the root is mounted from a
verity device, a trial slot whose rootfs was altered on disk fails at its first read and
the board falls back to its committed slot, and an altered block of the committed running
slot is refused when read instead of returning the altered bytes.

One board runs the cases in order. The newer release (v2) is hello-c with a 1 MiB block
of random bytes linked into its program as a section that is never loaded: squashfs stores
incompressible data as it is, so the test finds those bytes in the payload and knows a
block of the app's file that nothing reads at boot.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet import lab
from fleet.image.disk import read_partitions
from fleet.release import load_manifest
from fleet.update import machine
from fleet.update.status import BoardStatus
from fleet.update.target import resolve
from tests.conftest import NEEDS_QEMU, Built, copy_example, fleet

pytestmark = [pytest.mark.virtual, NEEDS_QEMU]

BOARD = "verity"
ROOT_A, ROOT_B = 5, 6
BLOB = random.Random(6).randbytes(1 << 20)
# A section the program loader never maps (no "a" flag): bytes in the file, read by nobody.
BLOB_ASM = '.section .fleet_test_blob,"",%progbits\n.incbin "blob.bin"\n'
RECIPE = "$CC -O2 -Wall -o $OUT src/hello.c blob.S"


@pytest.fixture(scope="module")
def v2(tmp_path_factory: pytest.TempPathFactory, hello_virt: Built) -> Path:
    base = tmp_path_factory.mktemp("verity-v2")
    app = copy_example(
        "hello-c", base / "app", version="2.0.0", release=2, lock_from=hello_virt.app,
        edits={'language = "c"': f'language = "command"\ncommand = "{RECIPE}"'},
    )
    (app / "blob.bin").write_bytes(BLOB)
    (app / "blob.S").write_text(BLOB_ASM)
    out = base / "out"
    fleet("build", "--board", "qemu-virt-arm64", "--project", app, "--out", out,
          "--key", hello_virt.key, "--dev")  # a shell for the test's reads, as hello_virt
    return out / "release"


@pytest.fixture(scope="module")
def board(hello_virt: Built) -> Iterator[str]:
    fleet("lab", "up", "--board", "qemu-virt-arm64", "--disk", hello_virt.disk, "--name", BOARD)
    yield BOARD
    fleet("lab", "down", BOARD, check=False)


def ssh(command: str) -> tuple[int, str, str]:
    with lab.session(lab.get(BOARD)) as session:
        result = session.exec(command, timeout=120)
    return result.exit_code, result.stdout.decode(), result.stderr.decode()


def agent(cmd: str, data: bytes | None = None) -> tuple[int, str]:
    with lab.session(lab.get(BOARD)) as session:
        result = session.exec(f"/etc/fleet/agent {cmd}", input=data, timeout=120)
    return result.exit_code, result.stderr.decode()


def install_without_try(release: Path) -> None:
    code, err = agent("install-manifest", machine.manifest_upload(release))
    assert code == 0, err
    for payload in load_manifest(release).payloads:
        code, err = agent(f"install {payload.name}", (release / payload.file).read_bytes())
        assert code == 0, err


def status() -> BoardStatus:
    return machine.board_status(resolve(BOARD))


def console_since(offset: int) -> str:
    return lab.get(BOARD).console_log.read_bytes()[offset:].decode(errors="replace")


def wait_console(offset: int, text: str, timeout: float = 180) -> str:
    deadline = time.monotonic() + timeout
    while text not in (seen := console_since(offset)):
        assert time.monotonic() < deadline, f"{text!r} not on the console:\n{seen[-3000:]}"
        time.sleep(0.2)
    return seen


def flip_byte(partition: int, offset: int) -> None:
    """Flip one bit of the byte at ``offset`` of ``partition`` on the board's disk file
    (the board is off)."""
    disk = lab.get(BOARD).disk
    where = read_partitions(disk)[partition].start + offset
    with disk.open("r+b") as handle:
        handle.seek(where)
        byte = handle.read(1)
        handle.seek(where)
        handle.write(bytes([byte[0] ^ 0x01]))


def test_root_is_a_dm_verity_device(board: str, hello_virt: Built) -> None:
    code, mounts, _ = ssh("cat /proc/mounts")
    assert code == 0
    root = [line.split() for line in mounts.splitlines() if line.split()[1] == "/"]
    assert [(r[0], r[2], r[3].split(",")[0]) for r in root] == [("/dev/dm-0", "squashfs", "ro")]
    code, out, _ = ssh("cat /sys/block/dm-0/dm/name; ls /sys/block/dm-0/slaves")
    assert out.split() == ["fleet-root", "vda5"]
    code, log, _ = ssh("dmesg")
    assert 'device-mapper: verity: sha256 using implementation' in log
    # The tree the board checks against is the one the signed manifest names.
    manifest = json.loads((hello_virt.release / "manifest.json").read_text())
    assert manifest["verity"]["data_blocks"] * 8 == int(
        ssh("cat /sys/block/dm-0/size")[1].strip()
    )


def test_altered_trial_slot_fails_verity_and_the_board_falls_back(
    board: str, v2: Path
) -> None:
    install_without_try(v2)  # slot B, nothing boots it yet
    lab.power(board, "off")
    # squashfs's mkfs time: squashfs itself would mount the edited image without a word.
    flip_byte(ROOT_B, 8)
    lab.power(board, "on")
    offset = lab.console_mark(lab.get(BOARD))
    code, err = agent("try")
    assert code == 0, err
    console = wait_console(offset, "fleet: system up: slot A")
    assert "trial boot of slot B" in console
    assert "device-mapper: verity" in console and "is corrupted" in console
    assert "used its boot attempts without committing; back to slot A" in console
    assert "2.0.0" not in console.split("is corrupted", 1)[1]  # v2 never started
    lab.wait_until_up(lab.get(BOARD), offset)
    now = status()
    assert (now.running_slot, now.app_version) == ("A", "1.0.0"), now.raw
    assert now.committed and not now.trial_pending, now.raw
    # What `fleet update` reports from the same record: rolled back, the boot failed.
    assert now.last_trial.startswith("release=2 slot=B from=A"), now.raw
    assert "booted" not in now.last_trial.split()[3:], now.raw


def test_altered_block_of_the_committed_slot_is_refused_when_read(
    board: str, v2: Path, hello_virt: Built
) -> None:
    result = json.loads(fleet("update", BOARD, v2, "--trust", hello_virt.pub, "--json").stdout)
    assert result["outcome"] == "updated" and result["running_slot"] == "B", result
    code, good, _ = ssh("sha256sum /app/bin/hello-c")
    assert code == 0
    payload = (v2 / "rootfs.squashfs").read_bytes()
    middle = len(BLOB) // 2
    at = payload.find(BLOB[middle : middle + 4096])
    assert at > 0, "the blob is not stored as it is"
    lab.power(board, "off")
    flip_byte(ROOT_B, at + 100)
    lab.power(board, "on")  # committed slot: nothing read at boot touches that block
    now = status()
    assert (now.running_slot, now.app_version) == ("B", "2.0.0") and now.committed, now.raw
    code, out, err = ssh("sha256sum /app/bin/hello-c")
    assert code != 0 and out != good, (out, err)
    assert "I/O error" in err or "Input/output error" in err, err
    code, out, err = ssh("cat /app/bin/hello-c | wc -c")
    assert int(out.split()[0]) < len(BLOB), "the read went past the altered block"
    _, log, _ = ssh("dmesg")
    assert "device-mapper: verity" in log and "is corrupted" in log
    # EIO, no restart: the board stays up on its committed slot.
    assert status().boot_id == now.boot_id

