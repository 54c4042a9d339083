"""fleet's inventory forms and their refusals: every bad entry fails before anything
runs, naming file, line and reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet import inventory
from fleet.inventory import InventoryError

pytestmark = pytest.mark.unit

PROFILES = ("qemu-virt-arm64", "rpi4b")


def load(tmp_path: Path, name: str, text: str) -> inventory.Inventory:
    path = tmp_path / name
    path.write_text(text)
    return inventory.load(path, PROFILES)


def refused(tmp_path: Path, name: str, text: str, line: int | None, words: str) -> None:
    with pytest.raises(InventoryError) as caught:
        load(tmp_path, name, text)
    message = str(caught.value)
    where = f"{tmp_path / name}:{line}: " if line else f"{tmp_path / name}: "
    assert message.startswith(where), message
    assert words in message, message


TOML = """
[defaults]
user = "pi"
key = "keys/fleet"
profile = "rpi4b"

[[boards]]
name = "kiosk-01"
address = "192.0.2.11"
groups = ["canary", "lobby"]
[boards.settings]
hostname = "kiosk-01"

[[boards]]
name = "kiosk-02"
address = "192.0.2.12"
port = 2222
profile = "qemu-virt-arm64"
groups = ["lobby"]

[groups.site]
children = ["lobby"]
"""


def test_fleets_toml_form(tmp_path: Path) -> None:
    fleet = load(tmp_path, "fleet.toml", TOML)
    one, two = fleet.hosts
    assert (one.address, one.port, one.user, one.profile) == ("192.0.2.11", 22, "pi", "rpi4b")
    assert one.key == tmp_path / "keys/fleet" and one.settings == {"hostname": "kiosk-01"}
    assert one.groups == ("canary", "lobby", "site") and one.source == f"{tmp_path}/fleet.toml:7"
    assert (two.port, two.profile) == (2222, "qemu-virt-arm64")
    assert [h.name for h in fleet.select("site")] == ["kiosk-01", "kiosk-02"]
    assert [h.name for h in fleet.select("canary")] == ["kiosk-01"]
    with pytest.raises(InventoryError, match=r"no group .nope. \(groups: canary, lobby, site\)"):
        fleet.select("nope")


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ('[[boards]]\nname = "a"\naddress = "x"\n[[boards]]\nname = "a"\naddress = "y"\n', 4,
         "board 'a' is listed twice (first at line 1)"),
        ('[[boards]]\nname = "a"\n', 1, "board 'a' has no address"),
        ('[[boards]]\naddress = "x"\n', 1, "a board needs a name"),
        ('[[boards]]\nname = "a"\naddress = "x"\nprofile = "pi9"\n', 1,
         "unknown board profile 'pi9' (known: qemu-virt-arm64, rpi4b)"),
        ('[[boards]]\nname = "a"\naddress = "x"\nport = 70000\n', 1, "bad port 70000"),
        ('[[boards]]\nname = "a"\naddress = "x"\nport = "22; rm"\n', 1, "bad port"),
        ('[[boards]]\nname = "a"\naddress = "x"\nuser = "a b"\n', 1, "bad ansible_user"),
        ('[[boards]]\nname = "a"\naddress = "x"\nsudo = true\n', 1, "unknown key(s) sudo"),
        ('[[boards]]\nname = "a"\naddress = "x"\ngroups = ["g"]\n'
         '[groups.g]\nchildren = ["h"]\n[groups.h]\nchildren = ["g"]\n', None,
         "children form a cycle: g -> h -> g"),
        ('boards = 3\n', None, "boards must be an array"),
        ('[[boards]\n', 1, "not valid TOML"),
        ('[server]\n', None, "unknown table(s) server"),
    ],
)
def test_bad_toml_entries_name_file_line_and_reason(
    tmp_path: Path, text: str, line: int | None, words: str
) -> None:
    refused(tmp_path, "fleet.toml", text, line, words)


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("[a:children]\nb\n[b:children]\na\n", 1, "children form a cycle: a -> b -> a"),
        ("[web]\nhost1\n[web:children]\nghost\n", 4, "names undefined group 'ghost'"),
        ("[ghost:vars]\nx=1\n", 1, "[ghost:vars] names undefined group 'ghost'"),
        ("[web:bogus]\nh\n", 1, "unknown type 'bogus'"),
        ("[web]\nh1 novalue\n", 2, "expected key=value after the host"),
        ("[web]\nh1 ansible_port=99999\n", 2, "bad port 99999"),
        ("[web]\nh1 fleet_profile=pi9\n", 2, "unknown board profile 'pi9'"),
        ("[web]\nh1 x='unterminated\n", 2, "cannot split host line"),
        ("[ web ]\nh1\n", 1, "invalid section"),
        ("[web]\nweb[1:99999999]\n", 2, "expands past"),
        ("[web]\nweb[01:100]\n", 2, "one width"),
        ("[web]\nweb[5:1:0]\n", 2, "bad step"),
    ],
)
def test_bad_ini_entries_name_file_line_and_reason(
    tmp_path: Path, text: str, line: int | None, words: str
) -> None:
    refused(tmp_path, "hosts", text, line, words)


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("- a\n- b\n", 1, "the inventory must be a mapping"),
        ("all:\n  children:\n    a:\n      children:\n        b:\n          children:\n"
         "            a:\n", 3, "children form a cycle"),
        ("all:\n  hostz:\n    a:\n", 2, "unknown key 'hostz'"),
        ("all:\n  hosts:\n    a:\n      ansible_port: [1]\n", 3, "bad port"),
        ("all: [\n", 2, "not valid YAML"),
        ("all:\n  hosts:\n    a: !!python/object:os.system {}\n", 3, "host a must be a mapping"),
        ("all:\n  vars:\n    x: !!python/name:os.system\n", 3, "not valid YAML"),
    ],
)
def test_bad_yaml_entries_name_file_line_and_reason(
    tmp_path: Path, text: str, line: int | None, words: str
) -> None:
    refused(tmp_path, "hosts.yml", text, line, words)


def test_untrusted_sizes_and_bytes_are_refused(tmp_path: Path) -> None:
    big = tmp_path / "hosts"
    with big.open("wb") as handle:
        handle.truncate((16 << 20) + 1)
    with pytest.raises(InventoryError, match="larger than 16 MiB"):
        inventory.load(big, PROFILES)
    binary = tmp_path / "bin.ini"
    binary.write_bytes(b"\xff\xfe[web]\n")
    with pytest.raises(InventoryError, match="not UTF-8"):
        inventory.load(binary, PROFILES)
    with pytest.raises(InventoryError, match="cannot read the inventory"):
        inventory.load(tmp_path / "missing.toml", PROFILES)


def test_ini_ranges_ports_and_literals(tmp_path: Path) -> None:
    fleet = load(tmp_path, "hosts", "[web]\nweb[08:10]:2200 n=7 s=text b=True\n[db]\nd[a:c]\n")
    assert [h.name for h in fleet.hosts] == ["web08", "web09", "web10", "da", "db", "dc"]
    web = fleet.get("web09")
    assert web.port == 2200 and web.vars["n"] == 7 and web.vars["s"] == "text"
    assert web.vars["b"] is True and web.source.endswith("hosts:2")
