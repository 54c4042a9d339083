"""Typed reading of TOML tables with errors that name the file and the field.

Every config file fleet reads (board profiles, fleet.toml, inventories, settings) is
outside input: a wrong or missing field is a ConfigError such as
``boards/rpi3b.toml: field 'boot.method': expected one of uboot-ab, rpi-tryboot, got 'x'``.
"""

from __future__ import annotations

import builtins
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

from fleet.errors import ConfigError

T = TypeVar("T")


def load_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no such file") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc


class Table:
    """A TOML table with its file and dotted prefix, for precise error messages."""

    def __init__(
        self, data: dict[builtins.str, Any], source: builtins.str, prefix: builtins.str = ""
    ) -> None:
        self.data = data
        self.source = source
        self.prefix = prefix
        self._seen: set[builtins.str] = set()

    def _name(self, key: builtins.str) -> builtins.str:
        return f"{self.prefix}{key}"

    def error(self, key: builtins.str, message: builtins.str) -> ConfigError:
        return ConfigError(f"{self.source}: field '{self._name(key)}': {message}")

    def _get(
        self, key: builtins.str, kind: type[T], kind_name: builtins.str, default: T | None
    ) -> T:
        self._seen.add(key)
        if key not in self.data:
            if default is not None:
                return default
            raise self.error(key, "missing")
        value = self.data[key]
        # bool is an int in Python; a TOML boolean is never a valid number here.
        if not isinstance(value, kind) or (
            kind is builtins.int and isinstance(value, builtins.bool)
        ):
            raise self.error(key, f"expected {kind_name}, got {type(value).__name__} {value!r}")
        return value

    def str(self, key: builtins.str, default: builtins.str | None = None) -> builtins.str:
        value = self._get(key, builtins.str, "a string", default)
        if value == "" and default is None:
            raise self.error(key, "must not be empty")
        return value

    def opt_str(self, key: builtins.str) -> builtins.str | None:
        self._seen.add(key)
        if key not in self.data:
            return None
        return self.str(key)

    def int(
        self,
        key: builtins.str,
        default: builtins.int | None = None,
        minimum: builtins.int | None = None,
    ) -> builtins.int:
        value = self._get(key, builtins.int, "an integer", default)
        if minimum is not None and value < minimum:
            raise self.error(key, f"must be at least {minimum}, got {value}")
        return value

    def opt_int(
        self, key: builtins.str, minimum: builtins.int | None = None
    ) -> builtins.int | None:
        self._seen.add(key)
        if key not in self.data:
            return None
        return self.int(key, minimum=minimum)

    def bool(self, key: builtins.str, default: builtins.bool | None = None) -> builtins.bool:
        return self._get(key, builtins.bool, "true or false", default)

    def choice(
        self,
        key: builtins.str,
        choices: Iterable[builtins.str],
        default: builtins.str | None = None,
    ) -> builtins.str:
        options = list(choices)
        value = self.str(key, default)
        if value not in options:
            raise self.error(key, f"expected one of {', '.join(options)}, got {value!r}")
        return value

    def str_list(
        self, key: builtins.str, default: list[builtins.str] | None = None
    ) -> list[builtins.str]:
        value = self._get(key, list, "a list of strings", default)
        for index, item in enumerate(value):
            if not isinstance(item, builtins.str):
                raise self.error(f"{key}[{index}]", f"expected a string, got {item!r}")
        return list(value)

    def table(self, key: builtins.str, required: builtins.bool = True) -> Table:
        self._seen.add(key)
        if key not in self.data:
            if required:
                raise self.error(key, "missing table")
            return Table({}, self.source, f"{self._name(key)}.")
        value = self.data[key]
        if not isinstance(value, dict):
            raise self.error(key, f"expected a table, got {type(value).__name__}")
        return Table(value, self.source, f"{self._name(key)}.")

    def opt_table(self, key: builtins.str) -> Table | None:
        """The table at ``key``, or None when the file has none (an optional section)."""
        if key not in self.data:
            self._seen.add(key)
            return None
        return self.table(key)

    def tables(self, key: builtins.str) -> list[Table]:
        self._seen.add(key)
        value = self.data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self.error(key, "expected an array of tables")
        return [Table(v, self.source, f"{self._name(key)}[{i}].") for i, v in enumerate(value)]

    def reject_unknown(self) -> None:
        """Refuse keys nobody read: a typo must not be silently ignored."""
        unknown = sorted(set(self.data) - self._seen)
        if unknown:
            raise self.error(unknown[0], "unknown field")
