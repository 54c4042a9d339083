"""The firmware model's documented rules, and the autoboot.txt fleet build writes."""

from __future__ import annotations

import pytest

from fleet.image.bootscript import tryboot_autoboot_txt
from tests.tryboot_model import PiFirmware

pytestmark = pytest.mark.unit

DOC_INITIAL = b"[all]\ntryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=3\n"


def test_built_autoboot_txt_is_the_documented_initial_one() -> None:
    assert tryboot_autoboot_txt().encode() == DOC_INITIAL


def test_normal_boot_uses_all_and_tryboot_uses_the_tryboot_section() -> None:
    pi = PiFirmware({"autoboot.txt": DOC_INITIAL})
    assert pi.boot() == (2, False)
    pi.reboot("0 tryboot")
    assert pi.boot() == (3, True)
    # One-shot: the next boot is a normal one again.
    assert pi.boot() == (2, False)


def test_a_reset_during_the_trial_returns_to_the_default() -> None:
    pi = PiFirmware({"autoboot.txt": DOC_INITIAL})
    pi.reboot("0 tryboot")
    assert pi.boot() == (3, True)
    pi.power_cut()
    assert pi.boot() == (2, False)


def test_missing_or_oversized_autoboot_boots_the_first_bootable_partition() -> None:
    assert PiFirmware({}).boot() == (1, False)
    big = DOC_INITIAL + b"#" * 512
    assert PiFirmware({"autoboot.txt": big}).boot() == (1, False)


def test_reboot_partition_argument_wins_over_autoboot() -> None:
    pi = PiFirmware({"autoboot.txt": DOC_INITIAL})
    pi.reboot("3")
    assert pi.boot() == (3, False)
