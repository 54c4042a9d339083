"""``fleet serve --dnsmasq-conf``: the configuration passes dnsmasq's own check, and a
real dnsmasq in a network namespace answers a Raspberry Pi-style PXE DHCPDISCOVER
(sent from a second namespace over a veth pair, 192.0.2.0/24) with the proxy offer the
Pi firmware looks for."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

FLEET = str(Path(sys.executable).parent / "fleet")
PROBE = str(Path(__file__).with_name("dhcp_probe.py"))


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


@pytest.fixture
def link() -> Iterator[tuple[str, str]]:
    server, client = "fleet-dns-s", "fleet-dns-c"
    sh("ip", "netns", "add", server)
    sh("ip", "netns", "add", client)
    try:
        sh("ip", "link", "add", "fdnss", "type", "veth", "peer", "name", "fdnsc")
        sh("ip", "link", "set", "fdnss", "netns", server)
        sh("ip", "link", "set", "fdnsc", "netns", client)
        sh("ip", "-n", server, "addr", "add", "192.0.2.1/24", "dev", "fdnss")
        sh("ip", "-n", server, "link", "set", "fdnss", "up")
        sh("ip", "-n", client, "link", "set", "fdnsc", "up")
        yield server, client
    finally:
        subprocess.run(["ip", "netns", "del", server], check=False)
        subprocess.run(["ip", "netns", "del", client], check=False)


def test_the_configuration_passes_dnsmasqs_check(tmp_path: Path) -> None:
    result = subprocess.run(
        [FLEET, "serve", "--dnsmasq-conf", "--bind", "192.0.2.1", "--subnet", "192.0.2.0/24"],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = result.stdout.splitlines()
    assert 'pxe-service=0,"Raspberry Pi Boot   ",bootcode.bin,192.0.2.1' in lines
    assert "dhcp-range=192.0.2.0,proxy" in lines and "port=0" in lines
    conf = tmp_path / "dnsmasq.conf"
    conf.write_text(result.stdout)
    check = subprocess.run(["dnsmasq", "--test", "-C", str(conf)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "needs --bind ADDRESS"),
        (["--bind", "example"], "not an IPv4 address"),
        (["--bind", "192.0.2.1", "--subnet", "198.51.100.0/24"], "is not in"),
    ],
)
def test_bad_addresses_are_refused(args: list[str], message: str) -> None:
    result = subprocess.run(
        [FLEET, "serve", "--dnsmasq-conf", *args], capture_output=True, text=True
    )
    assert result.returncode == 2 and message in result.stderr


def test_dnsmasq_answers_a_pi_pxe_discover(link: tuple[str, str], tmp_path: Path) -> None:
    server, client = link
    conf = tmp_path / "dnsmasq.conf"
    conf.write_text(
        subprocess.run(
            [FLEET, "serve", "--dnsmasq-conf", "--bind", "192.0.2.1", "--interface", "fdnss"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    dnsmasq = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            server,
            "dnsmasq",
            "-C",
            str(conf),
            "-k",
            f"--dhcp-leasefile={tmp_path / 'leases'}",
            f"--pid-file={tmp_path / 'pid'}",
            f"--log-facility={tmp_path / 'log'}",
        ],
    )
    try:
        deadline = time.monotonic() + 10
        while "proxy on subnet" not in (
            (tmp_path / "log").read_text() if (tmp_path / "log").exists() else ""
        ):
            assert time.monotonic() < deadline, "dnsmasq did not start"
            time.sleep(0.05)
        probe = subprocess.run(
            ["ip", "netns", "exec", client, sys.executable, PROBE, "fdnsc"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        dnsmasq.terminate()
        dnsmasq.wait(10)
    assert probe.returncode == 0, probe.stderr
    offer = json.loads(probe.stdout)
    assert offer["53"] == "02"  # DHCPOFFER
    assert offer["54"] == "c0000201"  # from 192.0.2.1: where the boards then fetch
    vendor = bytes.fromhex(offer["43"])
    assert b"Raspberry Pi Boot   " in vendor  # the three spaces older Pi 3 ROMs compare
    assert bytes.fromhex("800001c0000201") in vendor  # boot server 192.0.2.1
    assert offer["yiaddr"] == "0.0.0.0"  # a proxy: no address is handed out
