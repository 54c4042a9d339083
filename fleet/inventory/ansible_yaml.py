"""Ansible's YAML inventory (ansible-core's plugins/inventory/yaml.py): top-level keys are
groups (usually ``all``); each group may hold ``hosts`` (name -> its variables),
``vars`` and ``children`` (name -> a group of the same form). Host names may hold ranges
and a port. Parsed with the safe loader, node by node, so every error names its line."""

from __future__ import annotations

from typing import Any

import yaml

from fleet.inventory.ansible_ini import host_pattern
from fleet.inventory.model import ALL, Builder

_GROUP_KEYS = ("hosts", "vars", "children")
_STR = "tag:yaml.org,2002:str"
_MAP = "tag:yaml.org,2002:map"
_NULL = "tag:yaml.org,2002:null"
# Aliases let a few lines stand for billions of values ("billion laughs") or for a value
# that holds itself; either would hang whatever walks the variables later.
MAX_NODES = 4_000_000


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def _check_size(root: yaml.Node, builder: Builder) -> None:
    """Refuse a document that aliases expand past MAX_NODES, or that contains itself."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    # Depth-first without recursion: a deep document must not exhaust Python's stack.
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            open_nodes.discard(key)
            sizes[key] = 1 + sum(sizes[id(c)] for c in _children(node))
            if sizes[key] > MAX_NODES:
                raise builder.error(_line(node), f"expands past {MAX_NODES} values (aliases)")
            continue
        if key in sizes:
            continue
        if key in open_nodes:
            raise builder.error(_line(node), "a YAML alias refers to a value that holds it")
        open_nodes.add(key)
        stack.append((node, True))
        for child in _children(node):
            if id(child) in open_nodes:
                raise builder.error(_line(child), "a YAML alias refers to a value that holds it")
            if id(child) not in sizes:
                stack.append((child, False))


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _pairs(
    loader: yaml.SafeLoader, node: yaml.Node, builder: Builder, what: str
) -> list[tuple[str, yaml.Node, int]]:
    """A mapping's entries in file order, merge keys (``<<: *common``) applied; a repeated
    key keeps its last value (as Ansible does, with a warning)."""
    if isinstance(node, yaml.ScalarNode) and node.tag == _NULL:
        return []
    if not isinstance(node, yaml.MappingNode) or node.tag != _MAP:
        raise builder.error(_line(node), f"{what} must be a mapping")
    loader.flatten_mapping(node)
    found: dict[str, tuple[str, yaml.Node, int]] = {}
    for key, item in node.value:
        if not isinstance(key, yaml.ScalarNode) or key.tag != _STR:
            raise builder.error(
                _line(key), f"{what}: {key.value!r} is not a name (quote numbers and booleans)"
            )
        name = str(key.value)
        line = found[name][2] if name in found else _line(key)
        found[name] = (name, item, line)
    return list(found.values())


def _names(
    loader: yaml.SafeLoader, node: yaml.Node, builder: Builder, what: str
) -> list[tuple[str, yaml.Node, int]]:
    # Ansible takes ``hosts: web1`` (a single name) for ``hosts: {web1: }``.
    if isinstance(node, yaml.ScalarNode) and node.tag == _STR:
        return [(str(node.value), yaml.ScalarNode(_NULL, "", node.start_mark), _line(node))]
    return _pairs(loader, node, builder, what)


class _Reader:
    def __init__(self, loader: yaml.SafeLoader, builder: Builder) -> None:
        self.loader = loader
        self.builder = builder
        # (group, node) pairs read already: an alias may repeat a group (Ansible reads it
        # again, to the same effect), so reading it once keeps aliases from multiplying.
        self.read: set[tuple[str, int]] = set()

    def variables(self, node: yaml.Node, what: str) -> dict[str, Any]:
        return {
            name: self.loader.construct_object(item, deep=True)
            for name, item, _ in _pairs(self.loader, node, self.builder, what)
        }

    def group(self, name: str, node: yaml.Node, line: int) -> None:
        builder = self.builder
        builder.group(name, line)
        if (name, id(node)) in self.read:
            return
        self.read.add((name, id(node)))
        for key, item, key_line in _pairs(self.loader, node, builder, f"group {name}"):
            if key == "hosts":
                for host, host_vars, host_line in _names(
                    self.loader, item, builder, f"group {name}: hosts"
                ):
                    variables = self.variables(host_vars, f"host {host}")
                    names, port = host_pattern(host, host_line, builder)
                    if port is not None:
                        variables["ansible_port"] = port
                    for each in names:
                        builder.host(each, host_line, name, variables)
            elif key == "vars":
                builder.group(name, line).vars.update(self.variables(item, f"group {name}: vars"))
            elif key == "children":
                for child, child_node, child_line in _names(
                    self.loader, item, builder, f"group {name}: children"
                ):
                    builder.child(name, child, child_line)
                    self.group(child, child_node, child_line)
            else:
                # Ansible skips it with a warning; fleet refuses a typo like "hostz" rather
                # than roll out to a fleet without the hosts it meant.
                raise builder.error(
                    key_line,
                    f"group {name}: unknown key {key!r} (a group holds {', '.join(_GROUP_KEYS)})",
                )


def parse(text: str, builder: Builder) -> None:
    # libyaml's parser when PyYAML has it (ten times faster); the same nodes either way.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(text)
    try:
        root = loader.get_single_node()
        if root is None or (isinstance(root, yaml.ScalarNode) and root.tag == _NULL):
            raise builder.error(0, "empty YAML inventory (Ansible refuses it too)")
        if isinstance(root, yaml.MappingNode):
            for key, _ in root.value:
                if isinstance(key, yaml.ScalarNode) and key.value == "plugin":
                    raise builder.error(
                        _line(key),
                        "an inventory plugin's configuration; fleet reads only "
                        "inventories (write one with ansible-inventory --list --yaml)",
                    )
        _check_size(root, builder)
        reader = _Reader(loader, builder)
        for name, node, line in _pairs(loader, root, builder, "the inventory"):
            reader.group(name, node, line)
            if name != ALL:
                builder.child(ALL, name, line)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise builder.error(int(mark.line) + 1 if mark else 0, f"not valid YAML: {exc}") from None
    finally:
        loader.dispose()
