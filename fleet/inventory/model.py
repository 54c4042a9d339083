"""The inventory's nouns and the rules every format shares: groups with children (no
cycles), variables merged with Ansible's precedence, and a board's SSH facts taken from
its variables."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleet.errors import ConfigError

# Ansible's implicit groups: every host is in all; one in no other group is in ungrouped.
ALL = "all"
UNGROUPED = "ungrouped"
MAX_BYTES = 16 << 20  # an inventory is untrusted input: bounded before it is parsed
MAX_HOSTS = 100_000  # also bounds what a host range like web[0:99999999] may expand to
MAX_GROUPS = 10_000
MAX_WORK = 20_000_000  # group memberships and variables read while resolving (about 5 s)
SETTING_PREFIX = "fleet_setting_"  # Ansible variables that carry provisioning settings
# The variables a board's facts come from (fleet_* are fleet's own, beside Ansible's).
FACTS = (
    "ansible_host",
    "ansible_user",
    "ansible_ssh_private_key_file",
    "fleet_known_hosts",
    "fleet_profile",
)
PATH_FACTS = ("ansible_ssh_private_key_file", "fleet_known_hosts")  # may hold spaces


def setting_text(value: Any) -> str | None:
    """A provisioning setting's text, or None when the value is no single value."""
    if isinstance(value, bool):
        return "true" if value else "false"  # what a board's shell scripts compare with
    if isinstance(value, str | int | float):
        return str(value)
    return None


class InventoryError(ConfigError):
    """A bad inventory; the message starts with ``FILE:LINE: ``."""


@dataclass(frozen=True)
class Host:
    name: str
    address: str
    port: int
    user: str
    key: Path | None
    known_hosts: Path | None
    profile: str | None
    groups: tuple[str, ...]
    vars: Mapping[str, Any]
    settings: Mapping[str, str]
    source: str


@dataclass(frozen=True)
class Inventory:
    path: Path
    hosts: tuple[Host, ...]
    groups: Mapping[str, tuple[str, ...]]

    def select(self, group: str | None = None) -> list[Host]:
        if group is None or group == ALL:
            return list(self.hosts)
        if group == UNGROUPED:
            return [h for h in self.hosts if not h.groups]
        if group not in self.groups:
            known = ", ".join(sorted(self.groups)) or "none"
            raise InventoryError(f"{self.path}: no group {group!r} (groups: {known})")
        members = set(self.groups[group])
        return [h for h in self.hosts if h.name in members]

    def get(self, name: str) -> Host:
        for host in self.hosts:
            if host.name == name:
                return host
        raise InventoryError(f"{self.path}: no board {name!r}")


@dataclass
class Group:
    name: str
    line: int
    vars: dict[str, Any] = field(default_factory=dict)
    children: dict[str, int] = field(default_factory=dict)  # child -> line naming it, in order
    hosts: dict[str, None] = field(default_factory=dict)  # an ordered set
    priority: int = 1


@dataclass
class RawHost:
    name: str
    line: int
    vars: dict[str, Any] = field(default_factory=dict)


class Builder:
    """What a parser found, in file order; ``finish`` applies the shared rules."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.groups: dict[str, Group] = {ALL: Group(ALL, 0), UNGROUPED: Group(UNGROUPED, 0)}
        self.hosts: dict[str, RawHost] = {}
        self._work = 0

    def where(self, line: int) -> str:
        return f"{self.path}:{line}" if line else str(self.path)

    def error(self, line: int, message: str) -> InventoryError:
        return InventoryError(f"{self.where(line)}: {message}")

    def group(self, name: str, line: int) -> Group:
        found = self.groups.get(name)
        if found is not None:
            found.line = found.line or line  # all and ungrouped: where the file names them
            return found
        if not name or any(c.isspace() for c in name):
            raise self.error(line, f"bad group name {name!r}")
        if len(self.groups) >= MAX_GROUPS:
            raise self.error(line, f"more than {MAX_GROUPS} groups")
        found = self.groups[name] = Group(name, line)
        return found

    def host(self, name: str, line: int, group: str | None, variables: Mapping[str, Any]) -> None:
        """Add ``name`` (again: Ansible merges a host's repeats) to ``group``."""
        raw = self.hosts.get(name)
        if raw is None:
            if not name or any(c.isspace() for c in name):
                raise self.error(line, f"bad host name {name!r}")
            if len(self.hosts) >= MAX_HOSTS:
                raise self.error(line, f"more than {MAX_HOSTS} hosts")
            raw = self.hosts[name] = RawHost(name, line)
        raw.vars.update(variables)
        if group is not None:
            self.group(group, line).hosts[name] = None

    def child(self, parent: str, child: str, line: int) -> None:
        if child == ALL:
            raise self.error(line, f"group {parent}: all cannot be a child; every group is in it")
        self.group(child, line)
        self.group(parent, line).children.setdefault(child, line)

    def _spend(self, amount: int, line: int) -> None:
        # Every rule below is linear in what it reads, but what it reads (groups a host is
        # in through children, the vars of each) can multiply; this caps the product.
        self._work += amount
        if self._work > MAX_WORK:
            raise self.error(line, f"too large to resolve (over {MAX_WORK} group memberships)")

    # ---- the shared rules ------------------------------------------------------------
    def _topological(self) -> list[str]:
        """Groups with every parent before its children; a cycle is an error."""
        state: dict[str, int] = {}  # 1: on the current path, 2: done
        done: list[str] = []
        for root in self.groups:
            if root in state:
                continue
            # Depth-first without recursion: a long chain must not exhaust Python's stack.
            path, pending = [root], [iter(self.groups[root].children.items())]
            state[root] = 1
            while path:
                step = next(pending[-1], None)
                if step is None:
                    state[path[-1]] = 2
                    done.append(path.pop())
                    pending.pop()
                    continue
                child, line = step
                if state.get(child) == 1:
                    loop = " -> ".join([*path[path.index(child) :], child])
                    raise self.error(line, f"children form a cycle: {loop}")
                if child not in state:
                    state[child] = 1
                    path.append(child)
                    pending.append(iter(self.groups[child].children.items()))
        done.reverse()
        return done

    def finish(self, profiles: Collection[str]) -> Inventory:
        order = self._topological()
        parents: dict[str, list[str]] = {g: [] for g in self.groups}
        for group in self.groups.values():
            for child in group.children:
                parents[child].append(group.name)
        # Ansible's reconcile: a group without a parent is a child of all.
        for name in order:
            if name != ALL and not parents[name]:
                self.groups[ALL].children.setdefault(name, 0)
                parents[name].append(ALL)
        # A group's depth is its longest path from all; its ancestors are every group above.
        depth: dict[str, int] = {ALL: 0}
        ancestors: dict[str, set[str]] = {ALL: set()}
        for name in order:
            if name == ALL:
                continue
            depth[name] = max(depth[p] + 1 for p in parents[name])
            above: set[str] = set()
            for parent in parents[name]:
                above |= ancestors[parent]
                above.add(parent)
            self._spend(len(above), self.groups[name].line)
            ancestors[name] = above
        for group in self.groups.values():
            if "ansible_group_priority" in group.vars:
                value = group.vars.pop("ansible_group_priority")
                try:
                    # Ansible keeps it as the group's priority, not as a variable.
                    group.priority = int(value)
                except (TypeError, ValueError):
                    raise self.error(
                        group.line,
                        f"group {group.name}: ansible_group_priority {value!r} is not a number",
                    ) from None
        direct: dict[str, set[str]] = {h: set() for h in self.hosts}
        for group in self.groups.values():
            for name in group.hosts:
                direct[name].add(group.name)
        hosts: list[Host] = []
        members: dict[str, list[str]] = {g: [] for g in self.groups if g not in (ALL, UNGROUPED)}
        for raw in self.hosts.values():
            mine = set(direct[raw.name])
            for direct_group in direct[raw.name]:
                mine |= ancestors[direct_group]
            mine -= {ALL, UNGROUPED}
            # Ansible's reconcile again: a host in no group of its own is in ungrouped (and
            # gets its vars); one in any other group is taken out of it.
            in_groups = tuple(sorted(mine))
            mine |= {ALL} if in_groups else {ALL, UNGROUPED}
            # Precedence as Ansible's sort_groups: shallower first, then by priority, then
            # by name; later wins, and the host's own vars win over all of them.
            ordered = sorted(
                (self.groups[g] for g in mine), key=lambda g: (depth[g.name], g.priority, g.name)
            )
            self._spend(len(mine) + sum(len(g.vars) for g in ordered), raw.line)
            merged: dict[str, Any] = {}
            for group in ordered:
                merged.update(group.vars)
            merged.update(raw.vars)
            for name in in_groups:
                members[name].append(raw.name)
            hosts.append(self._host(raw, merged, in_groups, profiles))
        return Inventory(self.path, tuple(hosts), {g: tuple(m) for g, m in members.items()})

    def _path(self, value: str | None) -> Path | None:
        if value is None:
            return None
        path = Path(value).expanduser()
        return path if path.is_absolute() else (self.path.parent / path)

    def _host(
        self,
        raw: RawHost,
        merged: dict[str, Any],
        groups: tuple[str, ...],
        profiles: Collection[str],
    ) -> Host:
        def bad(message: str) -> InventoryError:
            return self.error(raw.line, f"host {raw.name}: {message}")

        port_value = merged.get("ansible_port", 22)
        text = str(port_value)
        digits = text.isascii() and text.isdigit() and len(text) <= 5
        if isinstance(port_value, bool) or not digits or not 1 <= int(text) <= 65535:
            raise bad(f"bad port {port_value!r}")
        facts = {name: merged.get(name) for name in FACTS}
        for name, item in facts.items():
            if item is None:
                continue
            if isinstance(item, str) and ("{{" in item or "{%" in item):
                # Ansible renders these when a play runs; fleet takes values as written.
                raise bad(f"{name} is a Jinja template ({item!r}); fleet needs the value")
            spaced = name not in PATH_FACTS and any(c.isspace() for c in str(item))
            if not isinstance(item, str) or not item or spaced:
                raise bad(f"bad {name} {item!r}")
        profile = facts["fleet_profile"]
        if profile is not None and profile not in profiles:
            raise bad(f"unknown board profile {profile!r} (known: {', '.join(sorted(profiles))})")
        settings: dict[str, str] = {}
        for name, item in merged.items():
            if name.startswith(SETTING_PREFIX):
                setting = setting_text(item)
                if setting is None:
                    raise bad(f"{name} must be a string, number or boolean")
                settings[name.removeprefix(SETTING_PREFIX)] = setting
        return Host(
            name=raw.name,
            address=facts["ansible_host"] or raw.name,  # Ansible's rule: else the name
            port=int(text),
            user=facts["ansible_user"] or "root",
            key=self._path(facts["ansible_ssh_private_key_file"]),
            known_hosts=self._path(facts["fleet_known_hosts"]),
            profile=profile,
            groups=groups,
            vars=merged,
            settings=settings,
            source=self.where(raw.line),
        )
