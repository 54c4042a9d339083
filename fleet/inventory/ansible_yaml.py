"""Ansible's YAML inventory (ansible-core's plugins/inventory/yaml.py): top-level keys are
groups (usually ``all``); each group may hold ``hosts`` (name -> its variables),
``vars`` and ``children`` (name -> a group of the same form). Host names may hold ranges.
Parsed with the safe loader, node by node, so every error names its line."""

from __future__ import annotations

from typing import Any

import yaml

from fleet.inventory.ansible_ini import expand
from fleet.inventory.model import ALL, Builder

_GROUP_KEYS = ("hosts", "vars", "children")


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def _pairs(node: yaml.Node, builder: Builder, what: str) -> list[tuple[str, yaml.Node, int]]:
    if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null":
        return []
    if not isinstance(node, yaml.MappingNode) or node.tag != "tag:yaml.org,2002:map":
        raise builder.error(_line(node), f"{what} must be a mapping")
    found = []
    for key, item in node.value:
        if not isinstance(key, yaml.ScalarNode):
            raise builder.error(_line(key), f"{what}: keys must be plain names")
        found.append((str(key.value), item, _line(key)))
    return found


def _variables(
    loader: yaml.SafeLoader, node: yaml.Node, builder: Builder, what: str
) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name, item, _ in _pairs(node, builder, what):
        result[name] = loader.construct_object(item, deep=True)
    return result


def _group(
    loader: yaml.SafeLoader, name: str, node: yaml.Node, line: int, builder: Builder
) -> None:
    builder.group(name, line)
    for key, item, key_line in _pairs(node, builder, f"group {name}"):
        if key == "hosts":
            for host, host_vars, host_line in _pairs(item, builder, f"group {name}: hosts"):
                variables = _variables(loader, host_vars, builder, f"host {host}")
                for each in expand(host, host_line, builder):
                    builder.host(each, host_line, name, variables)
        elif key == "vars":
            builder.group(name, line).vars.update(
                _variables(loader, item, builder, f"group {name}: vars")
            )
        elif key == "children":
            for child, child_node, child_line in _pairs(item, builder, f"group {name}: children"):
                builder.child(name, child, child_line)
                _group(loader, child, child_node, child_line, builder)
        else:
            raise builder.error(
                key_line,
                f"group {name}: unknown key {key!r} (a group holds {', '.join(_GROUP_KEYS)})",
            )


def parse(text: str, builder: Builder) -> None:
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return
        for name, node, line in _pairs(root, builder, "the inventory"):
            _group(loader, name, node, line, builder)
            if name != ALL:
                builder.child(ALL, name, line)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise builder.error(int(mark.line) + 1 if mark else 0, f"not valid YAML: {exc}") from None
    finally:
        loader.dispose()
