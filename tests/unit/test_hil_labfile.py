"""Lab files: every resource and driver reads into dataclasses, and every mistake is
reported before anything runs as ``FILE:LINE: board 'NAME': ...``."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet.errors import ConfigError, LabError, UsageError
from fleet.hil.labfile import (
    Drivers,
    GpioLine,
    LabBoard,
    LabFileError,
    NetworkAddress,
    Pdu,
    PowerCommand,
    SerialPort,
    UsbDisk,
    UsbPort,
    VirtualBoard,
    load_lab,
)
from tests.conftest import REPO

pytestmark = pytest.mark.unit

KNOWN = "cm4, qemu-virt-arm64, rpi3b, rpi4b, rpi5, zero2w"
POWER = "virtual, uhubctl, gpio, pdu, command, manual"

GOOD = """\
[lab]
name = "desk"

[[board]]
name = "pi4-1"
profile = "rpi4b"
features = ["wifi", "ethernet"]

[board.resources]
serial = { port = "/dev/ttyUSB0", baud = 115200 }
usb_port = { hub = "1-1.4", port = 2 }
usb_disk = { device = "/dev/disk/by-id/usb-Generic_Reader-0:0" }
network = { address = "192.0.2.21", user = "pi", ssh_port = 2222, http_port = 8081 }

[board.drivers]
power = "uhubctl"
console = "serial"
provision = "usb-flash"

[[board]]
name = "pi3-gpio"
profile = "rpi3b"
resources.gpio = { chip = "gpiochip0", line = 17, active_low = true }
resources.network = { address = "192.0.2.22" }
drivers = { power = "gpio", console = "none", provision = "netboot" }

[[board]]
name = "cm4-pdu"
profile = "cm4"
features = ["ethernet"]

[board.resources]
pdu = { on = "http://192.0.2.10/o/{outlet}/on", off = "https://pdu/off?o={outlet}", outlet = 3 }
serial = { port = "/dev/ttyUSB1" }
network = { address = "cm4.lab" }

[board.drivers]
power = "pdu"
console = "serial"
provision = "update"

[[board]]
name = "zero-relay"
profile = "zero2w"

[board.resources]
power_command = { on = ["relay", "on"], off = ["relay", "off"], cycle = ["relay", "cycle"] }
network = { address = "192.0.2.24" }

[board.drivers]
power = "command"
console = "none"
provision = "update"

[[board]]
name = "qemu-1"
profile = "qemu-virt-arm64"
features = ["ethernet"]

[board.resources.virtual]
kind = "qemu"

[board.drivers]
power = "virtual"
console = "qemu"
provision = "virtual-flash"

[[board]]
name = "sim-1"
profile = "rpi5"

[board.resources]
virtual = { kind = "sim" }

[board.drivers]
power = "manual"
console = "none"
provision = "update"
"""

# One board; the line numbers of the expected messages below count in this text.
BASE = """\
[lab]
name = "desk"
[[board]]
name = "pi4-1"
profile = "rpi4b"
features = ["wifi", "ethernet"]
[board.drivers]
console = "serial"
power = "uhubctl"
provision = "update"
[board.resources]
serial = { port = "/dev/ttyUSB0", baud = 115200 }
usb_port = { hub = "1-1.4", port = 2 }
network = { address = "192.0.2.21", user = "root", ssh_port = 22, http_port = 8080 }
"""


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FLEET_BOARDS_DIR", str(REPO / "boards"))


def _load(text: str) -> LabBoard:
    Path("lab.toml").write_text(text)
    return load_lab(Path("lab.toml")).boards[0]


def _error(text: str) -> str:
    Path("lab.toml").write_text(text)
    with pytest.raises(LabFileError) as caught:
        load_lab(Path("lab.toml"))
    return str(caught.value)


def _base(*changes: tuple[str, str]) -> str:
    text = BASE
    for old, new in changes:
        assert old in text, old
        text = text.replace(old, new, 1)
    return text


def test_a_good_file_with_every_resource_and_driver() -> None:
    Path("lab.toml").write_text(GOOD)
    lab = load_lab(Path("lab.toml"))
    assert lab.name == "desk" and lab.path == Path("lab.toml")
    assert [b.name for b in lab.boards] == [
        "pi4-1",
        "pi3-gpio",
        "cm4-pdu",
        "zero-relay",
        "qemu-1",
        "sim-1",
    ]
    pi4 = lab.board("pi4-1")
    assert pi4 == LabBoard(
        name="pi4-1",
        profile="rpi4b",
        features=("wifi", "ethernet"),
        resources={
            "serial": SerialPort("/dev/ttyUSB0", 115200),
            "usb_port": UsbPort("1-1.4", 2),
            "usb_disk": UsbDisk("/dev/disk/by-id/usb-Generic_Reader-0:0"),
            "network": NetworkAddress("192.0.2.21", "pi", 2222, 8081),
        },
        drivers=Drivers("uhubctl", "serial", "usb-flash"),
        line=4,
    )
    gpio = lab.board("pi3-gpio")
    assert gpio.resources == {
        "gpio": GpioLine("gpiochip0", 17, active_low=True),
        "network": NetworkAddress("192.0.2.22", "root", 22, 8080),
    }
    assert gpio.drivers == Drivers("gpio", "none", "netboot") and gpio.line == 20
    pdu = lab.board("cm4-pdu").resource(Pdu)
    assert pdu.url("on") == "http://192.0.2.10/o/3/on"
    assert pdu.url("off") == "https://pdu/off?o=3"
    assert lab.board("cm4-pdu").resource(SerialPort) == SerialPort("/dev/ttyUSB1", 115200)
    assert lab.board("zero-relay").resource(PowerCommand) == PowerCommand(
        ("relay", "on"), ("relay", "off"), ("relay", "cycle")
    )
    qemu = lab.board("qemu-1")
    assert qemu.resources == {"virtual": VirtualBoard("qemu")}
    assert qemu.drivers == Drivers("virtual", "qemu", "virtual-flash")
    sim = lab.board("sim-1")
    assert sim.resource(VirtualBoard).kind == "sim"
    assert sim.drivers == Drivers("manual", "none", "update")
    with pytest.raises(LabError, match="board 'sim-1' has no serial resource"):
        sim.resource(SerialPort)


def test_boards_are_selected_by_profile_features_and_name() -> None:
    Path("lab.toml").write_text(GOOD)
    lab = load_lab(Path("lab.toml"))

    def names(**how: object) -> list[str]:
        return [b.name for b in lab.select(**how)]  # type: ignore[arg-type]

    assert names() == [b.name for b in lab.boards]
    assert names(features=["ethernet"]) == ["pi4-1", "cm4-pdu", "qemu-1"]
    assert names(features=["ethernet", "wifi"]) == ["pi4-1"]
    assert names(profile="cm4") == ["cm4-pdu"]
    assert names(profile="cm4", features=["wifi"]) == []
    assert names(names=["qemu-1", "pi4-1"]) == ["pi4-1", "qemu-1"]  # lab order
    assert names(names=["qemu-1", "pi4-1"], profile="rpi4b") == ["pi4-1"]
    with pytest.raises(UsageError) as caught:
        lab.select(None, [], ["pi9"])
    assert str(caught.value) == (
        "lab 'desk' has no board 'pi9' (known: pi4-1, pi3-gpio, cm4-pdu, zero-relay, qemu-1, sim-1)"
    )


def test_the_base_of_the_error_cases_is_good() -> None:
    board = _load(BASE)
    assert board.drivers == Drivers("uhubctl", "serial", "update")
    assert set(board.resources) == {"serial", "usb_port", "network"}


ERRORS = [
    # drivers
    (
        [('power = "uhubctl"', 'power = "relayy"')],
        f"lab.toml:9: board 'pi4-1': unknown power driver 'relayy' (one of: {POWER})",
    ),
    (
        [('console = "serial"', 'console = "uart"')],
        "lab.toml:8: board 'pi4-1': unknown console driver 'uart' (one of: serial, qemu, none)",
    ),
    (
        [('provision = "update"', 'provision = "dd"')],
        "lab.toml:10: board 'pi4-1': unknown provision driver 'dd'"
        " (one of: usb-flash, netboot, update, virtual-flash)",
    ),
    (
        [('power = "uhubctl"', 'power = "gpio"')],
        "lab.toml:9: board 'pi4-1': power driver 'gpio' needs a 'gpio' resource",
    ),
    (
        [("network = {", "# network = {")],
        "lab.toml:10: board 'pi4-1': provision driver 'update' needs a 'network' or 'virtual'"
        " resource",
    ),
    (
        [('provision = "update"', 'provision = "virtual-flash"')],
        "lab.toml:10: board 'pi4-1': provision driver 'virtual-flash' needs a 'virtual' resource",
    ),
    (
        [('console = "serial"', 'console = "qemu"'), ("serial = {", 'virtual = { kind = "sim" }#')],
        "lab.toml:8: board 'pi4-1': console driver 'qemu' needs a virtual resource of kind 'qemu'",
    ),
    (
        [('power = "uhubctl"', "")],
        "lab.toml:7: board 'pi4-1': missing key 'drivers.power'",
    ),
    (
        [("[board.drivers]", "[board.driverz]")],
        "lab.toml:3: board 'pi4-1': missing table 'drivers'\n"
        "lab.toml:7: board 'pi4-1': unknown key 'driverz'",
    ),
    (
        [('provision = "update"', 'provison = "update"')],
        "lab.toml:7: board 'pi4-1': missing key 'drivers.provision'\n"
        "lab.toml:10: board 'pi4-1': unknown key 'drivers.provison'",
    ),
    # resources
    (
        [("serial = {", "seriall = {")],
        "lab.toml:8: board 'pi4-1': console driver 'serial' needs a 'serial' resource\n"
        "lab.toml:12: board 'pi4-1': unknown resource 'seriall' (one of: serial, usb_port,"
        " gpio, pdu, power_command, network, usb_disk, virtual)",
    ),
    (
        [('port = "/dev/ttyUSB0", ', "")],
        "lab.toml:12: board 'pi4-1': missing key 'resources.serial.port'",
    ),
    (
        [("baud = 115200", "bud = 115200")],
        "lab.toml:12: board 'pi4-1': unknown key 'resources.serial.bud'",
    ),
    (
        [("baud = 115200", 'baud = "fast"')],
        "lab.toml:12: board 'pi4-1': resources.serial.baud: expected an integer,"
        " got a string 'fast'",
    ),
    (
        [("baud = 115200", "baud = true")],
        "lab.toml:12: board 'pi4-1': resources.serial.baud: expected an integer,"
        " got a boolean True",
    ),
    (
        [('port = "/dev/ttyUSB0"', 'port = ""')],
        "lab.toml:12: board 'pi4-1': resources.serial.port: must not be empty",
    ),
    (
        [("port = 2", "port = 0")],
        "lab.toml:13: board 'pi4-1': resources.usb_port.port: must be 1..255, got 0",
    ),
    (
        [('hub = "1-1.4"', 'hub = "usb1"')],
        "lab.toml:13: board 'pi4-1': resources.usb_port.hub: expected a uhubctl location"
        " such as 1-1.4, got 'usb1'",
    ),
    (
        [('address = "192.0.2.21"', 'address = " "')],
        "lab.toml:14: board 'pi4-1': resources.network.address: must not be empty",
    ),
    (
        [("ssh_port = 22", "ssh_port = 70000")],
        "lab.toml:14: board 'pi4-1': resources.network.ssh_port: must be 1..65535, got 70000",
    ),
    (
        [("serial = { port", "serial = 5 #")],
        "lab.toml:12: board 'pi4-1': resources.serial: expected a table, got an integer 5",
    ),
    (
        [("usb_port = {", 'usb_disk = { device = "sdb" }#')],
        "lab.toml:9: board 'pi4-1': power driver 'uhubctl' needs a 'usb_port' resource\n"
        "lab.toml:13: board 'pi4-1': resources.usb_disk.device: expected an absolute path,"
        " got 'sdb'",
    ),
    # the board itself
    (
        [('profile = "rpi4b"', 'profile = "rpi9"')],
        f"lab.toml:5: board 'pi4-1': unknown profile 'rpi9' (known: {KNOWN})",
    ),
    (
        [('features = ["wifi", "ethernet"]', 'featurs = ["wifi"]')],
        "lab.toml:6: board 'pi4-1': unknown key 'featurs'",
    ),
    (
        [('features = ["wifi", "ethernet"]', 'features = "wifi"')],
        "lab.toml:6: board 'pi4-1': features: expected an array of non-empty strings,"
        " got a string 'wifi'",
    ),
    (
        [('name = "pi4-1"', 'name = "Pi4_1"')],
        "lab.toml:4: board 'Pi4_1': name 'Pi4_1': expected [a-z0-9][a-z0-9-]{0,30}",
    ),
    (
        [('name = "pi4-1"', "")],
        "lab.toml:3: board #1: missing key 'name'",
    ),
    # the lab
    (
        [('name = "desk"', 'name = "my desk"')],
        "lab.toml:2: lab.name 'my desk': expected [a-z0-9][a-z0-9-]{0,30}",
    ),
    (
        [("[lab]", "[labb]")],
        "lab.toml:1: missing table 'lab'\nlab.toml:1: unknown key 'labb'",
    ),
]


@pytest.mark.parametrize(("changes", "message"), ERRORS)
def test_each_mistake_names_file_line_and_board(
    changes: list[tuple[str, str]], message: str
) -> None:
    assert _error(_base(*changes)) == message


def test_resource_fields_are_type_checked() -> None:
    def one(resource: str) -> str:
        line = 'serial = { port = "/dev/ttyUSB0", baud = 115200 }'
        drivers = ('power = "uhubctl"', 'power = "manual"'), ('"serial"', '"none"')
        return _error(_base((line, resource), *drivers))

    prefix = "lab.toml:12: board 'pi4-1': "
    assert one('gpio = { chip = "gpiochip0", line = 17, active_low = "no" }') == (
        prefix + "resources.gpio.active_low: expected true or false, got a string 'no'"
    )
    assert one('gpio = { chip = "gpiochip0", line = -1 }') == (
        prefix + "resources.gpio.line: must be 0..65535, got -1"
    )
    assert one('pdu = { on = "ftp://pdu/{outlet}", off = "http://pdu/off", outlet = 1 }') == (
        prefix + "resources.pdu.on: expected an http:// or https:// URL, got 'ftp://pdu/{outlet}'"
    )
    assert one('pdu = { on = "http://pdu/{host}/on", off = "http://pdu/off" }') == (
        prefix + "resources.pdu.on: expected a URL whose only placeholder is {outlet},"
        " got 'http://pdu/{host}/on'"
    )
    assert one('pdu = { on = "http://pdu/{outlet:3}", off = "http://pdu/off" }') == (
        prefix + "resources.pdu.on: expected a URL whose only placeholder is {outlet},"
        " got 'http://pdu/{outlet:3}'"
    )
    assert one('pdu = { on = "http://pdu/{outlet}/on", off = "http://pdu/off" }') == (
        prefix + "missing key 'resources.pdu.outlet': the URLs use {outlet}"
    )
    assert one('pdu = { on = "http://pdu/on", off = "http:///off" }') == (
        prefix + "resources.pdu.off: expected an http:// or https:// URL, got 'http:///off'"
    )
    assert one('power_command = { on = [], off = ["relay", "off"] }') == (
        prefix
        + "resources.power_command.on: expected a command: a non-empty array of strings,"
        + " got an array []"
    )
    assert one('power_command = { on = ["relay", 1], off = ["relay", "off"] }') == (
        prefix
        + "resources.power_command.on: expected a command: a non-empty array of strings,"
        + " got an array ['relay', 1]"
    )
    assert one('power_command = { on = ["relay"], off = ["relay"], cycle = "relay" }') == (
        prefix
        + "resources.power_command.cycle: expected a command: a non-empty array of strings,"
        + " got a string 'relay'"
    )
    assert one('virtual = { kind = "vm" }') == (
        prefix + "unknown virtual kind 'vm' (one of: qemu, sim)"
    )


def test_a_key_in_a_subtable_is_reported_on_its_own_line() -> None:
    text = _base(
        ('serial = { port = "/dev/ttyUSB0", baud = 115200 }', "[board.resources.serial]"),
        ('usb_port = { hub = "1-1.4", port = 2 }', 'port = "/dev/ttyUSB0"'),
        ("network = {", 'baud = "fast"\n[board.resources.network]\n#'),
    )
    text += 'address = "192.0.2.21"\n[board.resources.usb_port]\nhub = "1-1.4"\nport = 2\n'
    assert _error(text) == (
        "lab.toml:14: board 'pi4-1': resources.serial.baud: expected an integer,"
        " got a string 'fast'"
    )


def test_a_duplicate_board_name_names_the_first() -> None:
    assert _error(BASE + BASE[BASE.index("[[board]]") :]) == (
        "lab.toml:16: board 'pi4-1': duplicate board name (first on line 4)"
    )


def test_every_mistake_in_every_board_is_reported_together() -> None:
    second = BASE[BASE.index("[[board]]") :].replace("pi4-1", "pi4-2").replace("uhubctl", "x")
    text = _base(("baud = 115200", "baud = 0")) + second
    assert _error(text) == (
        "lab.toml:12: board 'pi4-1': resources.serial.baud: must be 50..4000000, got 0\n"
        f"lab.toml:21: board 'pi4-2': unknown power driver 'x' (one of: {POWER})"
    )


def test_a_multiline_string_is_not_read_as_keys() -> None:
    text = _base(
        ('features = ["wifi", "ethernet"]', 'features = ["""\n[lab]\nbaud = 1"""]'),
    ).replace("baud = 115200", 'baud = "x"')
    assert _error(text) == (
        "lab.toml:14: board 'pi4-1': resources.serial.baud: expected an integer, got a string 'x'"
    )


def test_bad_toml_keeps_tomllibs_line() -> None:
    message = _error(BASE.replace('profile = "rpi4b"', 'profile = "rpi4b'))
    assert message.startswith("lab.toml:5: not valid TOML: ")
    assert "(at line 5, column" in message


def test_a_lab_without_boards_or_file() -> None:
    assert _error('[lab]\nname = "desk"\n') == (
        "lab.toml:1: no [[board]]: a lab needs at least one board"
    )
    with pytest.raises(LabFileError, match=r"^nope\.toml: no such file$"):
        load_lab(Path("nope.toml"))
    assert issubclass(LabFileError, ConfigError)
