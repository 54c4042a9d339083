"""fleet reads Ansible inventories as Ansible does: for the same INI and YAML files, its
hosts, groups (children included) and merged variables equal what ansible-inventory
--list prints (ansible-core, in the dev extras)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fleet import inventory

pytestmark = pytest.mark.integration

DATA = Path(__file__).resolve().parent.parent / "unit" / "data" / "inventory"
ANSIBLE_INVENTORY = Path(sys.executable).with_name("ansible-inventory")
FILES = ["lobby.ini", "deep.ini", "fleet.yml"]


def ansible_view(path: Path) -> dict[str, Any]:
    assert ANSIBLE_INVENTORY.exists(), "ansible-core is a dev dependency: make venv installs it"
    proc = subprocess.run([str(ANSIBLE_INVENTORY), "-i", str(path), "--list"],
                          capture_output=True, text=True, check=True,
                          env={"ANSIBLE_LOCAL_TEMP": "/tmp", "PATH": "/usr/bin:/bin",
                               "HOME": str(path.parent)})
    return dict(json.loads(proc.stdout))


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
    theirs = ansible_view(path)
    ours = inventory.load(path)
    hostvars = theirs["_meta"]["hostvars"]
    assert {h.name for h in ours.hosts} == transitive(theirs, "all") == set(hostvars)
    groups = {g for g in theirs if g not in ("_meta", "all", "ungrouped")}
    assert set(ours.groups) == groups
    for group in groups:
        assert set(ours.groups[group]) == transitive(theirs, group), group
    for host in ours.hosts:
        assert dict(host.vars) == hostvars[host.name], host.name
        assert {g for g in groups if host.name in transitive(theirs, g)} == set(host.groups)
        assert host.address == hostvars[host.name].get("ansible_host", host.name)
        assert host.port == int(hostvars[host.name].get("ansible_port", 22))


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
