"""WiFi on a virtual board: Debian's mac80211_hwsim gives the board two simulated radios.
A test-only image adds hostapd; the test starts an access point (WPA2) and busybox's DHCP
server on wlan1, and the board's own client joins it on wlan0 with the settings
provisioned as a user provisions them (--wifi-ssid, --wifi-psk-file, --wifi-country).
`fleet status`, over the board's wired link, reports the link; a wrong PSK is reported
on the console and in `fleet status`, and the wired link stays up."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet import lab
from tests.conftest import Built, copy_example, fleet

pytestmark = pytest.mark.virtual

BOARD = "wifi"
SSID = "fleet lab"
PASSPHRASE = "fleet-test-passphrase"
HOSTAPD = f"""interface=wlan1
driver=nl80211
ssid={SSID}
hw_mode=g
channel=6
wpa=2
wpa_passphrase={PASSPHRASE}
wpa_key_mgmt=WPA-PSK
rsn_pairwise=CCMP
"""
UDHCPD = """interface wlan1
start 192.0.2.100
end 192.0.2.150
lease_file /run/ap/leases
option subnet 255.255.255.0
"""


@pytest.fixture(scope="module")
def wifi_image(tmp_path_factory: pytest.TempPathFactory, hello_virt: Built) -> Path:
    base = tmp_path_factory.mktemp("wifi")
    app = copy_example("hello-c", base / "app", lock_from=hello_virt.app)
    toml = app / "fleet.toml"
    toml.write_text('packages = ["hostapd"]\n' + toml.read_text() + "\n[image]\nwifi = true\n")
    fleet("build", "--board", "qemu-virt-arm64", "--project", app, "--out", base / "out",
          "--key", hello_virt.key, "--dev")
    return base / "out" / "disk.img"


@pytest.fixture(scope="module")
def psk_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("psk")
    (folder / "good").write_text(PASSPHRASE + "\n")
    (folder / "bad").write_text("not-the-passphrase\n")
    return {"good": folder / "good", "bad": folder / "bad"}


@pytest.fixture(scope="module")
def board(wifi_image: Path, psk_files: dict[str, Path]) -> Iterator[str]:
    fleet("lab", "up", "--board", "qemu-virt-arm64", "--disk", wifi_image, "--name", BOARD,
          "--wifi-ssid", SSID, "--wifi-psk-file", psk_files["good"], "--wifi-country", "GB")
    yield BOARD
    fleet("lab", "down", BOARD, check=False)


def start_access_point() -> None:
    """hostapd and udhcpd on the board's second radio, as root over the wired link."""
    with lab.session(lab.get(BOARD)) as session:
        for name, text in (("hostapd.conf", HOSTAPD), ("udhcpd.conf", UDHCPD)):
            wrote = session.exec(f"mkdir -p /run/ap && cat > /run/ap/{name}", input=text.encode())
            assert wrote.exit_code == 0, wrote.stderr
        done = session.exec(
            ": > /run/ap/leases && ifconfig wlan1 192.0.2.1 netmask 255.255.255.0 up && "
            "hostapd -B /run/ap/hostapd.conf > /run/ap/hostapd.log 2>&1 && "
            "udhcpd /run/ap/udhcpd.conf"
        )
    assert done.exit_code == 0, done.stderr


def wifi_status(until: str, timeout: float = 90) -> dict[str, object]:
    """`fleet status --json`'s wifi object, once its state is ``until``."""
    deadline = time.monotonic() + timeout
    while True:
        raw = json.loads(fleet("status", BOARD, "--json").stdout)
        wifi = raw["wifi"]
        assert isinstance(wifi, dict)
        if wifi["state"] == until and (until != "connected" or wifi["address"]):
            return wifi
        assert time.monotonic() < deadline, f"WiFi still {wifi} after {timeout} s"
        time.sleep(1)


def console() -> str:
    return lab.get(BOARD).console_log.read_text(errors="replace")


def test_the_board_joins_the_provisioned_network(board: str) -> None:
    start_access_point()
    wifi = wifi_status("connected")
    assert wifi["interface"] == "wlan0" and wifi["ssid"] == SSID
    address = str(wifi["address"])
    assert address.startswith("192.0.2.") and 100 <= int(address.rsplit(".", 1)[1]) <= 150
    text = console()
    assert f"fleet: wifi: joined network '{SSID}'" in text
    assert f"fleet: wifi: address {address}" in text
    shown = fleet("status", BOARD).stdout
    assert f"wifi wlan0: connected, network '{SSID}', address {address}" in shown
    # The card holds the derived key, never the passphrase.
    with lab.session(lab.get(BOARD)) as session:
        stored = session.exec("cat /boot/firmware/fleet/wifi").stdout.decode()
    assert PASSPHRASE not in stored and f"ssid={SSID.encode().hex()}" in stored
    assert "country=GB" in stored


def test_a_wrong_psk_is_reported_and_the_wired_link_stays(
    board: str, psk_files: dict[str, Path]
) -> None:
    lab.power(board, "off")
    fleet("provision", lab.get(board).disk, "--wifi-ssid", SSID,
          "--wifi-psk-file", psk_files["bad"])
    offset = len(console())
    lab.power(board, "on")
    start_access_point()
    wifi = wifi_status("wrong-psk")
    assert wifi["address"] is None
    assert f"fleet: wifi: warning: wrong PSK for network '{SSID}'" in console()[offset:]
    assert "wifi wlan0: wrong-psk" in fleet("status", BOARD).stdout
    # The wired link is still the way in: the app answers and SSH works.
    with lab.session(lab.get(BOARD)) as session:
        assert session.exec("cat /run/fleet/slot").stdout.decode().strip() == "A"


def test_hand_edited_wifi_settings_are_checked_on_the_board(board: str, tmp_path: Path) -> None:
    """fleet/wifi on the card is outside input: a value that is not what fleet writes
    (here a PSK line that would inject a second network block) keeps WiFi off."""
    import subprocess

    from fleet.provision import MTOOLS_ENV, firmware_offset

    lab.power(board, "off")
    disk = lab.get(board).disk
    bad = tmp_path / "wifi"
    bad.write_text(f"ssid={SSID.encode().hex()}\npsk=00\n}}\nnetwork={{\n")
    subprocess.run(["mcopy", "-o", "-i", f"{disk}@@{firmware_offset(disk)}", str(bad),
                    "::/fleet/wifi"], check=True, env={**MTOOLS_ENV, "PATH": "/usr/bin:/bin"})
    offset = len(console())
    lab.power(board, "on")
    wifi = wifi_status("bad-settings", timeout=60)
    assert wifi["address"] is None
    assert "bad settings in fleet/wifi (psk must be 64 hex digits); WiFi stays off" in (
        console()[offset:])
    with lab.session(lab.get(BOARD)) as session:
        assert session.exec("test -e /run/fleet/wpa.conf").exit_code != 0
