"""Failing storage during an install, on a real QEMU virt board (issue 10, item 2): the
board's disk sits on QEMU's blkdebug driver, which fails every write (or read) that
touches chosen sectors of slot B, as a dying card does. The board must never record,
try or commit a slot whose bytes did not reach the partition, and `fleet update` says
why.

Before the fix the agent hashed the stream (`tee $dev | sha256sum`): the page cache took
the write, the stream's hash matched and the slot was recorded as installed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet import lab
from fleet.image.disk import read_partitions
from fleet.update import machine
from fleet.update.target import resolve
from tests.conftest import NEEDS_QEMU, Built, fleet

pytestmark = [pytest.mark.virtual, NEEDS_QEMU]

BOOT_B, ROOT_B = 3, 6


def faults(event: str, sector: int) -> str:
    # iotype: a rule armed by its event would otherwise fail reads and writes alike.
    iotype = "read" if event == "read_aio" else "write"
    return (
        f'[inject-error]\nevent = "{event}"\niotype = "{iotype}"\nerrno = "5"\n'
        f'sector = "{sector}"\nonce = "off"\n'
    )


@pytest.fixture(scope="module")
def v2(hello_v2_virt: Path) -> Path:
    return hello_v2_virt


def sector_in(disk: Path, number: int, fraction: float) -> int:
    part = read_partitions(disk)[number]
    return (part.start + int(part.size * fraction)) // 512 // 8 * 8


@pytest.fixture()
def faulty(request: pytest.FixtureRequest, hello_virt: Built, tmp_path: Path) -> Iterator[str]:
    event, number = request.param
    config = tmp_path / "faults.cfg"
    # Inside the first MiB of the payload: every release's payload reaches it.
    config.write_text(faults(event, sector_in(hello_virt.disk, number, 0.001)))
    name = f"faulty-{number}"
    fleet("lab", "up", "--board", "qemu-virt-arm64", "--disk", hello_virt.disk, "--name", name,
          "--storage-faults", config)
    yield name
    fleet("lab", "down", name, check=False)


def update(board: str, release: Path, pub: Path) -> tuple[dict[str, object], int]:
    proc = fleet("update", board, release, "--trust", pub, "--json", check=False)
    return json.loads(proc.stdout), proc.returncode


@pytest.mark.parametrize("faulty", [("write_aio", ROOT_B)], indirect=True)
def test_a_write_the_card_fails_is_never_installed(
    faulty: str, v2: Path, hello_virt: Built
) -> None:
    result, code = update(faulty, v2, hello_virt.pub)
    assert code == 11 and result["outcome"] == "refused", result
    reason = str(result["reason"])
    assert reason.startswith("board: payload rootfs: writing /dev/vda6 failed ("), reason
    assert reason.endswith("slot B stays unbootable"), reason
    now = machine.board_status(resolve(faulty))
    assert now.slot("B") is None and now.committed and now.running_slot == "A"
    with lab.session(lab.get(faulty)) as session:
        tried = session.exec("/etc/fleet/agent try")
    assert tried.exit_code == 3 and b"holds no verified release" in tried.stderr
    # A power cycle on the same card: still the committed slot A, nothing on trial.
    lab.power(faulty, "cycle")
    after = machine.board_status(resolve(faulty))
    assert after.running_slot == "A" and after.committed and after.slot("B") is None


@pytest.mark.parametrize("faulty", [("read_aio", BOOT_B)], indirect=True)
def test_a_written_range_that_cannot_be_read_back_is_never_installed(
    faulty: str, v2: Path, hello_virt: Built
) -> None:
    result, code = update(faulty, v2, hello_virt.pub)
    assert code == 11 and result["outcome"] == "refused", result
    assert str(result["reason"]) == (
        "board: payload boot: reading /dev/vda3 back failed; slot B stays unbootable"
    )
    now = machine.board_status(resolve(faulty))
    assert now.slot("B") is None and now.committed and now.running_slot == "A"
