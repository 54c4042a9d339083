"""fleet reads Ansible inventories as Ansible does: for the same INI and YAML files, its
hosts, groups (children included) and merged variables equal what ansible-inventory
--list prints (ansible-core, in the dev extras); and files Ansible refuses, fleet
refuses too, naming the line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fleet import inventory
from fleet.inventory import InventoryError

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not Path(sys.executable).with_name("ansible-inventory").exists(),
        reason="ansible-inventory not installed (pip install -e '.[dev]' brings ansible-core)",
    ),
]

DATA = Path(__file__).resolve().parent.parent / "unit" / "data" / "inventory"
ANSIBLE_INVENTORY = Path(sys.executable).with_name("ansible-inventory")
# lobby.ini: ungrouped hosts, all:vars, sibling groups by name, priority, a host in
# several groups; deep.ini: three levels of children, ranges with steps and letters;
# edge.ini: IPv6 hosts, ungrouped:vars, nested literals, comments, empty groups;
# fleet.yml: YAML nesting and top-level groups; edge.yml: merge keys, ports in host
# keys, shorthand, repeated keys.
FILES = ["lobby.ini", "deep.ini", "edge.ini", "fleet.yml", "edge.yml"]


def ansible(path: Path, *, check: bool = True) -> subprocess.CompletedProcess[str]:
    # Only the plugin the file is meant for, so a refusal is not retried as another form.
    plugin = "yaml" if path.suffix in (".yml", ".yaml") else "ini"
    return subprocess.run(
        [str(ANSIBLE_INVENTORY), "-i", str(path), "--list"],
        capture_output=True,
        text=True,
        check=check,
        env={
            "PATH": "/usr/bin:/bin",
            "HOME": str(path.parent),
            "ANSIBLE_LOCAL_TEMP": str(path.parent / "ansible-tmp"),
            "ANSIBLE_INVENTORY_ENABLED": plugin,
            "ANSIBLE_INVENTORY_UNPARSED_FAILED": "true",
        },
    )


def transitive(doc: dict[str, Any], group: str) -> set[str]:
    entry = doc.get(group, {})
    found = set(entry.get("hosts", []))
    for child in entry.get("children", []):
        found |= transitive(doc, child)
    return found


@pytest.mark.parametrize("name", FILES)
def test_fleet_reads_what_ansible_reads(name: str, tmp_path: Path) -> None:
    path = tmp_path / name
    path.write_bytes((DATA / name).read_bytes())
    theirs: dict[str, Any] = json.loads(ansible(path).stdout)
    ours = inventory.load(path)
    hostvars = theirs["_meta"]["hostvars"]
    assert {h.name for h in ours.hosts} == transitive(theirs, "all") == set(hostvars)
    groups = {g for g in theirs if g not in ("_meta", "all", "ungrouped")}
    # ansible-inventory leaves out groups with neither hosts nor children; fleet keeps
    # them (selecting an empty group is no error), empty.
    assert groups <= set(ours.groups)
    assert all(not ours.groups[g] for g in set(ours.groups) - groups)
    for group in groups:
        assert set(ours.groups[group]) == transitive(theirs, group), group
    assert {h.name for h in ours.select("ungrouped")} == transitive(theirs, "ungrouped")
    for host in ours.hosts:
        mine = hostvars[host.name]
        assert dict(host.vars) == mine, host.name
        assert {g for g in groups if host.name in transitive(theirs, g)} == set(host.groups)
        assert host.address == mine.get("ansible_host", host.name)
        assert host.port == int(mine.get("ansible_port", 22))
        assert host.user == mine.get("ansible_user", "root")


def test_the_facts_fleet_takes_from_ansible_variables(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yml"
    path.write_bytes((DATA / "fleet.yml").read_bytes())
    fleet = inventory.load(path)
    pi3 = fleet.get("pi-03")
    assert (pi3.address, pi3.port, pi3.user, pi3.profile) == ("192.0.2.5", 22, "root", "rpi4b")
    assert pi3.key == tmp_path / "keys/upstairs"
    assert pi3.vars["region"] == "upstairs"  # the deeper group wins
    assert [h.name for h in fleet.select("lobby")] == ["pi-01", "pi-02", "pi-03", "pi-04"]
    assert fleet.get("wh-1").vars["region"] == "warehouse"
    deep = tmp_path / "deep.ini"
    deep.write_bytes((DATA / "deep.ini").read_bytes())
    south = inventory.load(deep).get("192.0.2.41")
    assert south.settings == {"hostname": "south-41"} and south.port == 2200


@pytest.mark.parametrize(
    ("name", "text", "line"),
    [
        ("cycle.ini", "[a:children]\nb\n[b:children]\na\n", 4),
        ("ghost.ini", "[web]\nh1\n[web:children]\nghost\n", 4),
        ("vars.ini", "[ghost:vars]\nx=1\n", 1),
        ("width.ini", "[web]\nweb[01:100]\n", 2),
        ("quote.ini", "[web]\nh1 x='open\n", 2),
        ("pair.ini", "[web]\nh1 novalue\n", 2),
        ("section.ini", "[web:bogus]\nh1\n", 1),
        ("colon.ini", "[web]\nh1:\n", 2),
        ("list.yml", "- a\n", 1),
        ("empty.yml", "# nothing\n", None),
        ("hosts.yml", "all:\n  hosts: [a, b]\n", 2),
        ("number.yml", "all:\n  hosts:\n    1:\n", 3),
        ("syntax.yml", "all: [\n", 2),
    ],
)
def test_what_ansible_refuses_fleet_refuses(
    name: str, text: str, line: int | None, tmp_path: Path
) -> None:
    path = tmp_path / name
    path.write_text(text)
    assert ansible(path, check=False).returncode != 0
    with pytest.raises(InventoryError) as caught:
        inventory.load(path)
    assert str(caught.value).startswith(f"{path}:{line}: " if line else f"{path}: ")
