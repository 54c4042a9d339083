"""fleet's inventory forms and their refusals: every bad entry fails before anything
runs, naming file, line and reason; Ansible's rules (ranges, literals, children,
precedence) as its INI and YAML plugins apply them."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet import inventory
from fleet.errors import ConfigError, FleetError
from fleet.inventory import InventoryError

pytestmark = pytest.mark.unit

PROFILES = ("qemu-virt-arm64", "rpi4b")


def load(tmp_path: Path, name: str, text: str) -> inventory.Inventory:
    path = tmp_path / name
    path.write_text(text)
    return inventory.load(path, PROFILES)


def refused(tmp_path: Path, name: str, text: str, line: int | None, words: str) -> str:
    with pytest.raises(InventoryError) as caught:
        load(tmp_path, name, text)
    message = str(caught.value)
    where = f"{tmp_path / name}:{line}: " if line else f"{tmp_path / name}: "
    assert message.startswith(where), message
    assert words in message, message
    return message


# ---- refusals first: an inventory is outside input ------------------------------------

BOARD = '[[boards]]\nname = "a"\naddress = "x"\n'


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        (
            BOARD + '[[boards]]\nname = "a"\naddress = "y"\n',
            5,
            "board 'a': listed twice (first at line 1)",
        ),
        ('[[boards]]\nname = "a"\n', 1, "board 'a': has no address"),
        ('[[boards]]\naddress = "x"\n', 1, "a board needs a name"),
        (
            BOARD + 'profile = "pi9"\n',
            4,
            "unknown board profile 'pi9' (known: qemu-virt-arm64, rpi4b)",
        ),
        (
            '\n[defaults]\nuser = "pi"\nprofile = "pi9"\n',
            4,
            "[defaults]: unknown board profile 'pi9'",
        ),
        ('[groups.g]\nprofile = "pi9"\n', 2, "group 'g': unknown board profile 'pi9'"),
        (BOARD + "port = 70000\n", 1, "bad port 70000"),
        (BOARD + 'port = "22; rm"\n', 4, "port must be an integer, got '22; rm'"),
        (BOARD + "port = true\n", 4, "port must be an integer"),
        (BOARD + 'user = "a b"\n', 1, "bad ansible_user 'a b'"),
        (BOARD + "user = 7\n", 4, "user must be a non-empty string"),
        (BOARD + 'key = ""\n', 4, "key must be a non-empty string"),
        (BOARD + "sudo = true\n", 4, "unknown key 'sudo'"),
        (BOARD + '[boards.vars]\nansible_host = "y"\n', 1, "vars may not set 'ansible_host'"),
        (BOARD + '[boards.vars]\nfleet_setting_x = "y"\n', 1, "vars may not set 'fleet_setting_x'"),
        (BOARD + "[boards.settings]\nwifi = [1]\n", 5, "setting 'wifi' must be a string"),
        (
            BOARD + 'groups = ["g"]\n[groups.g]\nchildren = ["h"]\n[groups.h]\nchildren = ["g"]\n',
            8,
            "children form a cycle: g -> h -> g",
        ),
        (BOARD + '[groups.g]\nchildren = ["typo"]\n', 5, "group 'g': child 'typo' is not a group"),
        (BOARD + '[groups.all]\nuser = "x"\n', 4, "group 'all': is implicit"),
        (BOARD + 'groups = ["all"]\n', 4, "all and ungrouped are implicit"),
        (BOARD + 'groups = "lobby"\n', 4, "groups must be a list"),
        ("boards = 3\n", 1, "boards must be an array"),
        ("[[boards]\n", 1, "not valid TOML"),
        ("\n\n[server]\nx = 1\n", 3, "unknown table 'server'"),
        ("[defaults]\naddress = 'x'\n", 2, "unknown key 'address'"),
        (
            "[[boards]]\nname = 'a'\naddress = 'x'\nprofile = '{{ p }}'\n",
            4,
            "unknown board profile",
        ),
        ("[[boards]]\nname = 'a'\naddress = '{{ ip }}'\n", 1, "is a Jinja template"),
    ],
)
def test_bad_toml_entries_name_file_line_and_reason(
    tmp_path: Path, text: str, line: int | None, words: str
) -> None:
    refused(tmp_path, "fleet.toml", text, line, words)


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("[a:children]\nb\n[b:children]\na\n", 4, "children form a cycle: a -> b -> a"),
        ("[a:children]\na\n", 2, "children form a cycle: a -> a"),
        ("[a:children]\nall\n", 2, "all cannot be a child"),
        ("[web]\nhost1\n[web:children]\nghost\n", 4, "names undefined group 'ghost'"),
        ("[ghost:vars]\nx=1\n", 1, "[ghost:vars] names undefined group 'ghost'"),
        ("[web:bogus]\nh\n", 1, "unknown type 'bogus'"),
        ("[web:vars]\njust-a-word\n[web]\n", 2, "expected key=value"),
        ("[web:children]\ntwo words\n", 2, "expected a group name"),
        ("[web]\nh1 novalue\n", 2, "expected key=value after the host"),
        ("[web]\nh1 ansible_port=99999\n", 2, "bad port 99999"),
        ("[web]\nh1:0\n", 2, "bad port 0"),
        ("[web]\nh1 ansible_port=[22]\n", 2, "bad port [22]"),
        ("[web]\nh1 fleet_profile=pi9\n", 2, "unknown board profile 'pi9'"),
        ("[web]\nh1 ansible_host='{{ ip }}'\n", 2, "is a Jinja template"),
        ("[web]\nh1 ansible_user=[1]\n", 2, "bad ansible_user [1]"),
        (
            "[web]\nh1 fleet_setting_x=[1]\n",
            2,
            "fleet_setting_x must be a string, number or boolean",
        ),
        ("[web]\nh1 x='unterminated\n", 2, "cannot split host line"),
        ("[ web ]\nh1\n", 1, "invalid section"),
        ("[web]\nh1:\n", 2, "ends in ':'"),
        ("---\nall:\n", 1, "start of a YAML document"),
        ("[web]\nweb[1:99999999]\n", 2, "expands past 100000 hosts"),
        ("[web]\nw[1:400][1:400]\n", 2, "expands past 100000 hosts"),
        ("[web]\nweb[01:100]\n", 2, "one width"),
        ("[web]\nweb[5:1:0]\n", 2, "bad step"),
        ("[web]\nweb[1]\n", 2, "must be [begin:end] or [begin:end:step]"),
        ("[web]\nweb[1:3\n", 2, "no closing ']'"),
        ("[web]\nweb[a:5]\n", 2, "not numbers or letters"),
        ("[web]\nweb[c:a]\n", 2, "begin <= end"),
        ("[web]\nweb[:]\n", 2, "must be [begin:end]"),
        (
            "[all:vars]\nansible_group_priority=high\n",
            1,
            "ansible_group_priority 'high' is not a number",
        ),
    ],
)
def test_bad_ini_entries_name_file_line_and_reason(
    tmp_path: Path, text: str, line: int | None, words: str
) -> None:
    refused(tmp_path, "hosts", text, line, words)


LAUGHS = "all:\n  vars:\n    l0: &l0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"    l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n" for i in range(1, 9)
)


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("- a\n- b\n", 1, "the inventory must be a mapping"),
        ("just text\n", 1, "the inventory must be a mapping"),
        ("", None, "empty YAML inventory"),
        ("# only a comment\n", None, "empty YAML inventory"),
        ("plugin: aws_ec2\n", 1, "an inventory plugin's configuration"),
        (
            "all:\n  children:\n    a:\n      children:\n        b:\n          children:\n"
            "            a:\n",
            7,
            "children form a cycle: a -> b -> a",
        ),
        ("all:\n  hostz:\n    a:\n", 2, "unknown key 'hostz'"),
        ("all:\n  hosts: [a, b]\n", 2, "group all: hosts must be a mapping"),
        ("all:\n  hosts:\n    1:\n", 3, "is not a name (quote numbers and booleans)"),
        ("all:\n  hosts:\n    a:\n      ansible_port: [1]\n", 3, "bad port [1]"),
        ("all:\n  hosts:\n    'a:0':\n", 3, "bad port 0"),
        ("all:\n  hosts:\n    a:\n      fleet_setting_x: {k: v}\n", 3, "must be a string, number"),
        ("all: [\n", 2, "not valid YAML"),
        ("all:\n  hosts:\n    a: 3\n", 3, "host a must be a mapping"),
        ("all:\n  hosts:\n    a: !!python/object:os.system {}\n", 3, "host a must be a mapping"),
        ("all:\n  vars:\n    x: !!python/name:os.system\n", 3, "not valid YAML"),
        ("all:\n  vars:\n    x: &a [1, *a]\n", 3, "a YAML alias refers to a value that holds it"),
        ("all: &g\n  children:\n    x: *g\n", 1, "a YAML alias refers to a value that holds it"),
        (LAUGHS, 9, "expands past 4000000 values"),
        ("all:\n  children:\n    all:\n", 3, "all cannot be a child"),
        ("all:\n  hosts:\n    'bad name':\n", 3, "bad host name 'bad name'"),
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
    with pytest.raises(InventoryError, match=r"missing\.toml: cannot read the inventory"):
        inventory.load(tmp_path / "missing.toml", PROFILES)
    with pytest.raises(InventoryError, match="cannot read the inventory: Is a directory"):
        inventory.load(tmp_path, PROFILES)


def test_an_inventory_error_is_a_config_error_with_its_exit_code(tmp_path: Path) -> None:
    with pytest.raises(InventoryError) as caught:
        load(tmp_path, "hosts", "[web]\nh1 novalue\n")
    assert isinstance(caught.value, ConfigError) and isinstance(caught.value, FleetError)
    assert caught.value.exit_code == 2


def test_a_long_chain_of_children_needs_no_deep_recursion(tmp_path: Path) -> None:
    text = "".join(f"[g{i}:children]\ng{i + 1}\n" for i in range(3000)) + "[g3000]\nh\n"
    fleet = load(tmp_path, "hosts", text)
    assert len(fleet.get("h").groups) == 3001
    looped = text.replace("[g3000]\nh\n", "[g3000:children]\ng0\n")
    refused(tmp_path, "hosts", looped, 6002, "children form a cycle: g0 -> g1 -> g2")


# ---- fleet's TOML form ---------------------------------------------------------------

TOML = """
[defaults]
user = "pi"
key = "keys/fleet"
profile = "rpi4b"
[defaults.settings]
timezone = "Europe/Paris"

[[boards]]
name = "kiosk-01"
address = "192.0.2.11"
groups = ["canary", "lobby"]
[boards.settings]
hostname = "kiosk-01"
[boards.vars]
colour = "red"

[[boards]]
name = "kiosk-02"
address = "192.0.2.12"
port = 2222
profile = "qemu-virt-arm64"
key = "~/.ssh/kiosk"
known_hosts = "/etc/fleet/known_hosts"
groups = ["lobby"]

[[boards]]
name = "spare"
address = "192.0.2.99"

[groups.site]
children = ["lobby"]
user = "site"
[groups.site.vars]
colour = "grey"
floor = 0

[groups.lobby]
user = "lobby"
[groups.lobby.settings]
wifi_country = "FR"
[groups.lobby.vars]
colour = "blue"
"""


def test_fleets_toml_form(tmp_path: Path) -> None:
    fleet = load(tmp_path, "fleet.toml", TOML)
    one, two, spare = fleet.hosts
    assert (one.name, one.address, one.port, one.profile) == ("kiosk-01", "192.0.2.11", 22, "rpi4b")
    assert one.key == tmp_path / "keys/fleet" and one.known_hosts is None
    assert one.settings == {
        "timezone": "Europe/Paris",
        "wifi_country": "FR",
        "hostname": "kiosk-01",
    }
    assert one.groups == ("canary", "lobby", "site") and one.source == f"{tmp_path}/fleet.toml:9"
    # Precedence: [defaults] < parent group < child group < the board itself.
    assert one.user == "lobby" and one.vars["colour"] == "red" and one.vars["floor"] == 0
    assert two.vars["colour"] == "blue" and two.user == "lobby"
    assert (two.port, two.profile) == (2222, "qemu-virt-arm64")
    assert two.key == Path.home() / ".ssh/kiosk"
    assert two.known_hosts == Path("/etc/fleet/known_hosts")
    assert (spare.user, spare.groups, spare.source) == ("pi", (), f"{tmp_path}/fleet.toml:27")
    assert "colour" not in spare.vars and spare.settings == {"timezone": "Europe/Paris"}
    assert one.vars["ansible_host"] == "192.0.2.11"  # the same variables Ansible's would give
    assert dict(fleet.groups) == {
        "canary": ("kiosk-01",),
        "lobby": ("kiosk-01", "kiosk-02"),
        "site": ("kiosk-01", "kiosk-02"),
    }
    assert [h.name for h in fleet.select()] == ["kiosk-01", "kiosk-02", "spare"]
    assert [h.name for h in fleet.select("all")] == ["kiosk-01", "kiosk-02", "spare"]
    assert [h.name for h in fleet.select("ungrouped")] == ["spare"]
    assert [h.name for h in fleet.select("site")] == ["kiosk-01", "kiosk-02"]
    assert fleet.get("kiosk-02") is two


def test_select_and_get_name_what_is_known(tmp_path: Path) -> None:
    fleet = load(tmp_path, "fleet.toml", TOML)
    with pytest.raises(InventoryError) as caught:
        fleet.select("nope")
    assert str(caught.value) == (
        f"{tmp_path}/fleet.toml: no group 'nope' (groups: canary, lobby, site)"
    )
    with pytest.raises(InventoryError, match=r"fleet.toml: no board 'kiosk-9'"):
        fleet.get("kiosk-9")


def test_minimal_toml_and_settings_as_text(tmp_path: Path) -> None:
    fleet = load(
        tmp_path,
        "fleet.toml",
        BOARD + "[boards.settings]\nhostname = 'a'\nssh = true\nslot = 2\n",
    )
    (host,) = fleet.hosts
    assert (host.user, host.port, host.key, host.profile) == ("root", 22, None, None)
    assert host.settings == {"hostname": "a", "ssh": "true", "slot": "2"}
    assert load(tmp_path, "empty.toml", "").hosts == ()


def test_inline_boards_find_their_lines_by_name(tmp_path: Path) -> None:
    text = (
        'boards = [\n  {name = "a", address = "x"},\n  {name = "b", address = "y", port = 0},\n]\n'
    )
    refused(tmp_path, "fleet.toml", text, 3, "host b: bad port 0")


def test_lab_inventory_form_loads(tmp_path: Path) -> None:
    # What `fleet lab inventory` writes.
    text = (
        '[[boards]]\nname = "sim-1"\naddress = "127.0.0.1"\nport = 40022\nuser = "root"\n'
        'key = "/lab/key"\nknown_hosts = "/lab/known_hosts"\nprofile = "qemu-virt-arm64"\n'
        'groups = ["lab"]\n'
    )
    host = load(tmp_path, "lab.toml", text).get("sim-1")
    assert (host.port, host.key, host.known_hosts) == (
        40022,
        Path("/lab/key"),
        Path("/lab/known_hosts"),
    )


def test_profiles_default_to_fleets_board_profiles(tmp_path: Path) -> None:
    path = tmp_path / "hosts"
    path.write_text("h1 fleet_profile=rpi4b\nh2\n")
    assert inventory.load(path).get("h1").profile == "rpi4b"
    path.write_text("h1 fleet_profile=pi9\n")
    with pytest.raises(
        InventoryError,
        match=r"hosts:1: host h1: unknown board profile 'pi9' "
        r"\(known: cm4, qemu-virt-arm64, rpi3b, rpi4b, rpi5, zero2w\)",
    ):
        inventory.load(path)


# ---- Ansible's INI ---------------------------------------------------------------------


def test_ini_ranges_ports_and_literals(tmp_path: Path) -> None:
    fleet = load(
        tmp_path,
        "hosts",
        '[web]\nweb[08:10]:2200 n=7 s=text b=True t="(1, {2})" e=...\n[db]\nd[a:c]\n'
        'r[1:2]-[x:y] q="two words"\n[v6]\n[2001:db8::1]:2222\nfe80::1:22\nw[0:9:5]\n',
    )
    assert [h.name for h in fleet.hosts] == [
        "web08",
        "web09",
        "web10",
        "da",
        "db",
        "dc",
        "r1-x",
        "r1-y",
        "r2-x",
        "r2-y",
        "2001:db8::1",
        "fe80::1:22",
        "w0",
        "w5",
    ]
    web = fleet.get("web09")
    assert web.port == 2200 and web.vars["n"] == 7 and web.vars["s"] == "text"
    assert web.vars["b"] is True and web.vars["t"] == [1, [2]] and web.vars["e"] == "..."
    assert web.source.endswith("hosts:2") and web.address == "web09"
    assert fleet.get("r2-y").vars["q"] == "two words"
    assert fleet.get("2001:db8::1").port == 2222 and fleet.get("fe80::1:22").port == 22


def test_ini_precedence_is_ansibles(tmp_path: Path) -> None:
    text = """
lone
[all:vars]
x=all
[ungrouped:vars]
x=ungrouped
[parent:children]
child
[parent:vars]
x=parent
y=parent
[child]
h1
h2 x=host
[child:vars]
x=child
[b]
h1
[a]
h1
[a:vars]
z=a
[b:vars]
z=b
[low]
h2
[low:vars]
z=low
ansible_group_priority=10
[other]
h2
[other:vars]
z=other
"""
    fleet = load(tmp_path, "hosts", text)
    h1, h2, lone = fleet.get("h1"), fleet.get("h2"), fleet.get("lone")
    assert lone.vars == {"x": "ungrouped"} and lone.groups == ()
    assert h1.vars["x"] == "child" and h1.vars["y"] == "parent"  # the deeper group wins
    assert h1.vars["z"] == "b"  # same depth: by name, later wins
    assert h2.vars["x"] == "host"  # the host's own win over every group
    assert h2.vars["z"] == "low"  # a higher ansible_group_priority wins over the name
    assert "ansible_group_priority" not in h2.vars
    assert h1.groups == ("a", "b", "child", "parent")


def test_ini_repeats_merge_and_hosts_keep_file_order(tmp_path: Path) -> None:
    fleet = load(tmp_path, "hosts", "[a]\nh2 x=1\nh1\n[b]\nh2 x=2 y=1\n[a]\nh2 z=3\n")
    assert [h.name for h in fleet.hosts] == ["h2", "h1"]
    assert fleet.get("h2").vars == {"x": 2, "y": 1, "z": 3} and fleet.get("h2").source.endswith(
        ":2"
    )
    assert fleet.groups["a"] == ("h2", "h1")


def test_ini_children_declared_later_and_comments(tmp_path: Path) -> None:
    text = "# top\n; also a comment\n[site:children]\nlobby  # the lobby\n[lobby]\nk1 # c\n"
    fleet = load(tmp_path, "hosts", text)
    assert fleet.groups == {"site": ("k1",), "lobby": ("k1",)}


def test_ansible_facts_and_paths(tmp_path: Path) -> None:
    fleet = load(
        tmp_path,
        "hosts",
        "[web]\nk1 ansible_host=192.0.2.1 ansible_port=2022 ansible_user=pi"
        " ansible_ssh_private_key_file='keys/my key' fleet_known_hosts=/etc/kh"
        " fleet_profile=rpi4b fleet_setting_hostname=k1\n",
    )
    host = fleet.get("k1")
    assert (host.address, host.port, host.user, host.profile) == ("192.0.2.1", 2022, "pi", "rpi4b")
    assert host.key == tmp_path / "keys/my key" and host.known_hosts == Path("/etc/kh")
    assert host.settings == {"hostname": "k1"}
    assert host.vars["fleet_setting_hostname"] == "k1"


def test_a_group_and_a_host_may_share_a_name(tmp_path: Path) -> None:
    # Ansible warns and goes on; so does fleet (without the warning).
    fleet = load(tmp_path, "hosts", "[web]\nweb\n")
    assert fleet.groups == {"web": ("web",)}


# ---- Ansible's YAML --------------------------------------------------------------------


def test_yaml_nesting_shorthand_merge_keys_and_repeats(tmp_path: Path) -> None:
    text = """
all:
  vars:
    base: &base {ansible_user: ops, tier: base}
  hosts:
    solo:
  children:
    racks:
      hosts: rack-1
      vars:
        <<: *base
        tier: racks
    edge:
      children: racks
      hosts:
        "edge-[1:2]:2222":
          <<: *base
        e3: {site: first}
        e3: {other: second}
"""
    fleet = load(tmp_path, "hosts.yaml", text)
    assert [h.name for h in fleet.hosts] == ["solo", "rack-1", "edge-1", "edge-2", "e3"]
    assert fleet.get("edge-2").port == 2222 and fleet.get("edge-2").user == "ops"
    assert fleet.get("rack-1").vars["tier"] == "racks" and fleet.get("rack-1").user == "ops"
    assert fleet.get("e3").vars == {
        "base": {"ansible_user": "ops", "tier": "base"},
        "other": "second",
    }
    assert fleet.groups["edge"] == ("rack-1", "edge-1", "edge-2", "e3")
    assert fleet.get("edge-1").source.endswith("hosts.yaml:16")


def test_yaml_top_level_groups_and_aliases_read_once(tmp_path: Path) -> None:
    text = """
web: &web
  hosts:
    w1:
db:
  children:
    a: *web
    b: *web
"""
    fleet = load(tmp_path, "hosts.yml", text)
    assert fleet.groups == {"web": ("w1",), "db": ("w1",), "a": ("w1",), "b": ("w1",)}
    assert fleet.get("w1").groups == ("a", "b", "db", "web")
