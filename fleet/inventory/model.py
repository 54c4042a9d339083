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
SETTING_PREFIX = "fleet_setting_"  # Ansible variables that carry provisioning settings


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
    children: list[str] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)
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

    def where(self, line: int) -> str:
        return f"{self.path}:{line}" if line else str(self.path)

    def error(self, line: int, message: str) -> InventoryError:
        return InventoryError(f"{self.where(line)}: {message}")

    def group(self, name: str, line: int) -> Group:
        if not name or any(c.isspace() for c in name):
            raise self.error(line, f"bad group name {name!r}")
        if name not in self.groups:
            self.groups[name] = Group(name, line)
        return self.groups[name]

    def host(self, name: str, line: int, group: str | None, variables: Mapping[str, Any]) -> None:
        if not name or any(c.isspace() for c in name):
            raise self.error(line, f"bad host name {name!r}")
        raw = self.hosts.get(name)
        if raw is None:
            if len(self.hosts) >= MAX_HOSTS:
                raise self.error(line, f"more than {MAX_HOSTS} hosts")
            raw = self.hosts[name] = RawHost(name, line)
        raw.vars.update(variables)
        if group is not None:
            members = self.group(group, line).hosts
            if name not in members:
                members.append(name)

    def child(self, parent: str, child: str, line: int) -> None:
        self.group(child, line)
        children = self.group(parent, line).children
        if child not in children:
            children.append(child)

    # ---- the shared rules ------------------------------------------------------------
    def _check_cycles(self) -> None:
        state: dict[str, int] = {}

        def visit(name: str, trail: list[str]) -> None:
            state[name] = 1
            for child in self.groups[name].children:
                if state.get(child) == 1:
                    loop = " -> ".join([*trail[trail.index(child) :], child])
                    raise self.error(self.groups[child].line, f"children form a cycle: {loop}")
                if state.get(child) is None:
                    visit(child, [*trail, child])
            state[name] = 2

        for name in list(self.groups):
            if state.get(name) is None:
                visit(name, [name])

    def _depths(self) -> dict[str, int]:
        """Each group's depth as Ansible counts it: the longest path from all."""
        tops = [
            g
            for g in self.groups
            if g != ALL and not any(g in o.children for o in self.groups.values())
        ]
        for name in tops:
            if name not in self.groups[ALL].children:
                self.groups[ALL].children.append(name)
        depth: dict[str, int] = {ALL: 0}
        order = [ALL]
        while order:
            name = order.pop()
            for child in self.groups[name].children:
                if depth.get(child, -1) < depth[name] + 1:
                    depth[child] = depth[name] + 1
                    order.append(child)
        return depth

    def _ancestors(self) -> dict[str, set[str]]:
        parents: dict[str, set[str]] = {g: set() for g in self.groups}
        for group in self.groups.values():
            for child in group.children:
                parents[child].add(group.name)
        found: dict[str, set[str]] = {}
        for name in self.groups:
            seen: set[str] = set()
            todo = list(parents[name])
            while todo:
                up = todo.pop()
                if up not in seen:
                    seen.add(up)
                    todo.extend(parents[up])
            found[name] = seen
        return found

    def finish(self, profiles: Collection[str]) -> Inventory:
        self._check_cycles()
        depth = self._depths()
        ancestors = self._ancestors()
        for group in self.groups.values():
            if "ansible_group_priority" in group.vars:
                try:
                    # Ansible keeps it as the group's priority, not as a variable.
                    group.priority = int(group.vars.pop("ansible_group_priority"))
                except (TypeError, ValueError) as exc:
                    raise self.error(group.line, "ansible_group_priority is not a number") from exc
        direct: dict[str, set[str]] = {h: set() for h in self.hosts}
        for group in self.groups.values():
            for name in group.hosts:
                direct[name].add(group.name)
        hosts: list[Host] = []
        members: dict[str, list[str]] = {g: [] for g in self.groups if g not in (ALL, UNGROUPED)}
        for raw in self.hosts.values():
            mine = set(direct[raw.name])
            for direct_group in list(mine):
                mine |= ancestors[direct_group]
            mine -= {ALL, UNGROUPED}
            # Ansible's reconcile: a host in no group of its own is in ungrouped (and gets
            # its vars); one in any other group is taken out of it.
            in_groups = tuple(sorted(mine))
            mine |= {ALL} if in_groups else {ALL, UNGROUPED}
            ordered = sorted(
                (self.groups[g] for g in mine),
                key=lambda g: (depth.get(g.name, 1), g.priority, g.name),
            )
            merged: dict[str, Any] = {}
            for group in ordered:
                merged.update(group.vars)
            merged.update(raw.vars)
            for g in mine:
                if g in members:
                    members[g].append(raw.name)
            hosts.append(self._host(raw, merged, in_groups, profiles))
        return Inventory(self.path, tuple(hosts), {g: tuple(m) for g, m in members.items()})

    def _path(self, raw: RawHost, value: Any, what: str) -> Path | None:
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            raise self.error(raw.line, f"host {raw.name}: {what} is not a path")
        path = Path(value).expanduser()
        return path if path.is_absolute() else (self.path.parent / path)

    def _host(
        self,
        raw: RawHost,
        merged: dict[str, Any],
        groups: tuple[str, ...],
        profiles: Collection[str],
    ) -> Host:
        port_value = merged.get("ansible_port", 22)
        try:
            port = int(port_value)
        except (TypeError, ValueError):
            port = 0
        if isinstance(port_value, bool) or not 1 <= port <= 65535:
            raise self.error(raw.line, f"host {raw.name}: bad port {port_value!r}")
        address = merged.get("ansible_host", raw.name)
        user = merged.get("ansible_user", "root")
        for what, value in (("ansible_host", address), ("ansible_user", user)):
            if not isinstance(value, str) or not value or any(c.isspace() for c in value):
                raise self.error(raw.line, f"host {raw.name}: bad {what} {value!r}")
        profile = merged.get("fleet_profile")
        if profile is not None and profile not in profiles:
            known = ", ".join(sorted(profiles))
            raise self.error(
                raw.line, f"host {raw.name}: unknown board profile {profile!r} (known: {known})"
            )
        settings: dict[str, str] = {}
        for name, item in merged.items():
            if name.startswith(SETTING_PREFIX):
                text = setting_text(item)
                if text is None:
                    raise self.error(
                        raw.line, f"host {raw.name}: {name} must be a string, number or boolean"
                    )
                settings[name.removeprefix(SETTING_PREFIX)] = text
        return Host(
            name=raw.name,
            address=address,
            port=port,
            user=user,
            key=self._path(raw, merged.get("ansible_ssh_private_key_file"), "the key"),
            known_hosts=self._path(raw, merged.get("fleet_known_hosts"), "known_hosts"),
            profile=profile,
            groups=groups,
            vars=merged,
            settings=settings,
            source=self.where(raw.line),
        )
