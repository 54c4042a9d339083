"""The firmware model's documented rules, and the autoboot.txt fleet build writes."""

from __future__ import annotations

import pytest

from fleet.image.bootscript import tryboot_autoboot_txt
from tests.tryboot_model import START_FILE, NoBootablePartition, PiFirmware

pytestmark = pytest.mark.unit

DOC_INITIAL = b"[all]\ntryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=3\n"


def test_built_autoboot_txt_is_the_documented_initial_one() -> None:
    assert tryboot_autoboot_txt().encode() == DOC_INITIAL


def test_normal_boot_uses_all_and_tryboot_uses_the_tryboot_section() -> None:
    pi = PiFirmware({"autoboot.txt": DOC_INITIAL}, kernel_passes_tryboot=True)
    assert pi.boot() == (2, False)
    pi.reboot("0 tryboot")
    assert pi.boot() == (3, True)
    # One-shot: the next boot is a normal one again.
    assert pi.boot() == (2, False)


def test_a_reset_during_the_trial_returns_to_the_default() -> None:
    pi = PiFirmware({"autoboot.txt": DOC_INITIAL}, kernel_passes_tryboot=True)
    pi.reboot("0 tryboot")
    assert pi.boot() == (3, True)
    pi.power_cut()
    assert pi.boot() == (2, False)


def test_missing_torn_or_oversized_autoboot_boots_the_first_partition_with_a_start_file() -> None:
    # fleet's partition 1 holds no start file, so the first bootable one is slot A's.
    assert PiFirmware({}, kernel_passes_tryboot=True).boot() == (2, False)
    committed_b = b"[all]\ntryboot_a_b=1\nboot_partition=3\n[tryboot]\nboot_partition=2\n"
    for torn in (committed_b[:30], DOC_INITIAL[:32]):  # cut inside the [all] boot_partition
        assert PiFirmware({"autoboot.txt": torn}, kernel_passes_tryboot=True).boot() == (2, False)
    big = DOC_INITIAL + b"#" * 512
    assert PiFirmware({"autoboot.txt": big}, kernel_passes_tryboot=True).boot() == (2, False)
    # Partition 1 counts only with the start file on it.
    with_start = {"autoboot.txt": big, START_FILE: b"firmware"}
    assert PiFirmware(with_start, kernel_passes_tryboot=True).boot() == (1, False)
    nothing = PiFirmware({}, kernel_passes_tryboot=True, slot_files={2: set(), 3: {"x"}})
    with pytest.raises(NoBootablePartition):
        nothing.boot()


def test_a_kernel_that_drops_the_flag_boots_the_default_slot_again() -> None:
    pi = PiFirmware({"autoboot.txt": DOC_INITIAL}, kernel_passes_tryboot=False)
    pi.reboot("0 tryboot")
    assert pi.boot() == (2, False)


def test_reboot_partition_argument_wins_over_autoboot() -> None:
    pi = PiFirmware({"autoboot.txt": DOC_INITIAL}, kernel_passes_tryboot=True)
    pi.reboot("3")
    assert pi.boot() == (3, False)
