"""The boot chart's parser on captured console logs: the lab's host-stamped log of a
virtual board, the same boot as a plain serial log (no host stamps), a log holding two
boots (a reboot the board did itself) and a kernel that prints (no `quiet`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet.lab import bootchart

DATA = Path(__file__).parent / "data"


def _stamped() -> list[tuple[float | None, str]]:
    return bootchart.parse_stamped((DATA / "virt-boot.stamped").read_text())


def test_every_phase_of_a_stamped_virtual_boot() -> None:
    chart = bootchart.chart(_stamped())
    assert chart.origin == "machine"
    assert chart.missing == ()
    at = {p.name: p.at for p in chart.phases}
    assert at["machine"] == 0.0
    order = ["machine", "bootloader", "kernel", "initramfs", "root", "init"]
    assert [at[n] for n in order] == sorted(at[n] for n in order)  # type: ignore[type-var]
    for name in ("network", "ssh", "app"):
        assert at[name] > at["init"]  # type: ignore[operator]
    assert chart.total == pytest.approx(1796159199.604 - 1796159189.138, abs=0.01)
    healthy = chart.phase("healthy")
    assert healthy.uptime == 8.77 and healthy.after == "app"
    assert healthy.took == pytest.approx(healthy.at - chart.phase("app").at)  # type: ignore[operator]


def test_a_plain_serial_log_is_charted_on_the_boards_clock() -> None:
    lines = [(None, line) for line in (DATA / "virt-boot.serial").read_text().splitlines()]
    chart = bootchart.chart(lines)
    assert chart.origin == "kernel"
    assert chart.missing == ("machine", "bootloader")
    assert chart.phase("kernel").at == 0.0
    assert chart.phase("initramfs").at == 2.40
    assert chart.total == 8.77
    assert "since kernel start" in bootchart.format_table(chart)


def test_only_the_last_boot_counts() -> None:
    first = _stamped()
    # The board reboots itself (an update's trial): U-Boot's banner again, no power-on.
    again = [(t + 100 if t else t, line) for t, line in first if "power on" not in line]
    chart = bootchart.chart(first + again)
    assert chart.missing == ()
    assert chart.phase("machine").at == 0.0
    # Its origin is the new banner: the power-on before it belongs to the first boot.
    assert chart.phase("healthy").at == pytest.approx(1796159199.604 - 1796159189.796, abs=0.01)


def test_a_power_ons_own_banner_starts_no_new_boot() -> None:
    lines = [(10.0, "fleet-lab: power on"), (10.5, "U-Boot 2023.01 (x)"),
             (11.0, "Starting kernel ..."), (13.0, "fleet: [   2.00] boot: initramfs")]
    chart = bootchart.chart(lines)
    assert chart.phase("bootloader").at == 0.5
    assert chart.phase("initramfs").took == 2.0


def test_a_kernel_that_prints_and_no_bootloader() -> None:
    # The emulator's floor: QEMU -kernel, the kernel's own first line, no U-Boot.
    lines = [(5.0, "fleet-lab: power on"),
             (5.4, "\x1b[0m[    0.000000] Booting Linux on physical CPU 0x0000000000 [0x410fd034]"),
             (6.3, "fleet: [   0.90] boot: initramfs")]
    chart = bootchart.chart(lines)
    assert chart.phase("kernel").at == pytest.approx(0.4)
    assert chart.phase("kernel").uptime == 0.0
    assert chart.phase("bootloader").at is None
    assert chart.phase("initramfs").took == pytest.approx(0.9)


def test_json_and_table() -> None:
    chart = bootchart.chart(_stamped())
    data = chart.to_json()
    assert [p["name"] for p in data["phases"]] == list(bootchart.NAMES)  # type: ignore[union-attr]
    assert data["missing"] == []
    table = bootchart.format_table(chart)
    for label in ("machine start", "bootloader", "kernel start", "initramfs", "root switched",
                  "init", "network", "SSH listening", "app started", "healthy"):
        assert label in table
    assert "total to a healthy app" in table
