"""The fleet: boards, groups and per-board settings, from fleet's ``inventory.toml`` or an
Ansible inventory (INI or YAML) read as it is (docs/inventory.md). Every entry is checked
before anything runs; an error names the file, the line and the reason."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from fleet.inventory import ansible_ini, ansible_yaml, fleet_toml
from fleet.inventory.model import MAX_BYTES, Builder, Host, Inventory, InventoryError

__all__ = ["Host", "Inventory", "InventoryError", "load"]


def _profile_names() -> list[str]:
    from fleet.boards import all_profiles

    return [p.name for p in all_profiles()]


def load(path: Path, profiles: Collection[str] | None = None) -> Inventory:
    """Read the inventory at ``path``: ``*.toml`` is fleet's form, ``*.yml``/``*.yaml``
    Ansible's YAML, anything else Ansible's INI (its default)."""
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_BYTES + 1)
    except OSError as exc:
        raise InventoryError(f"{path}: cannot read the inventory: {exc.strerror}") from exc
    if len(data) > MAX_BYTES:
        raise InventoryError(f"{path}: larger than {MAX_BYTES >> 20} MiB; not an inventory")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InventoryError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    builder = Builder(path)
    known = _profile_names() if profiles is None else profiles
    suffix = path.suffix.lower()
    if suffix == ".toml":
        fleet_toml.parse(text, builder, known)
    elif suffix in (".yml", ".yaml"):
        ansible_yaml.parse(text, builder)
    else:
        ansible_ini.parse(text, builder)
    return builder.finish(known)
