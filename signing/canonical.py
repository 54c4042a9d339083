"""The one byte form of a manifest. What is signed is exactly these bytes, and a file
whose bytes are not in this form is refused, so there is never a second reading.

The form is JSON with sorted keys, one-space indent, ASCII only, integers only (no
floats), and a final newline: one scalar per line, so a POSIX shell on the board can
read fields with sed while verifying the very bytes that were signed.
"""

from __future__ import annotations

import json
from typing import Any

from signing.errors import SigningError


class CanonicalError(SigningError):
    """The bytes are not a manifest in canonical form."""


def canonical_bytes(document: dict[str, Any]) -> bytes:
    _check_types(document, "")
    return (json.dumps(document, sort_keys=True, indent=1, ensure_ascii=True) + "\n").encode()


def parse_canonical(data: bytes) -> dict[str, Any]:
    """Parse ``data`` and insist that it is in canonical form (so no two encodings exist)."""
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as exc:
        raise CanonicalError("manifest is not ASCII") from exc

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in pairs]
        if len(keys) != len(set(keys)):
            raise CanonicalError("manifest has a duplicate key")
        return dict(pairs)

    def no_float(value: str) -> Any:
        raise CanonicalError("manifest has a floating point number")

    def no_constant(value: str) -> Any:
        raise CanonicalError(f"manifest has {value}")

    try:
        document = json.loads(
            text,
            object_pairs_hook=no_duplicates,
            parse_float=no_float,
            parse_constant=no_constant,
        )
    except CanonicalError:
        raise
    except json.JSONDecodeError as exc:
        raise CanonicalError(f"manifest is not JSON: {exc.msg} at line {exc.lineno}") from exc
    except ValueError as exc:
        # Python refuses to convert integers of thousands of digits (int_max_str_digits).
        raise CanonicalError("manifest has a number too long to read") from exc
    except RecursionError as exc:
        raise CanonicalError("manifest is nested too deeply") from exc
    if not isinstance(document, dict):
        raise CanonicalError("manifest is not a JSON object")
    try:
        again = canonical_bytes(document)
    except RecursionError as exc:
        raise CanonicalError("manifest is nested too deeply") from exc
    if again != data:
        raise CanonicalError("manifest is not in canonical form")
    return document


def _check_types(value: Any, where: str) -> None:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return
    if isinstance(value, int):
        # Keep every integer exact in any JSON reader (and in a shell's arithmetic).
        if not -(2**63) <= value < 2**63:
            raise CanonicalError(f"integer out of range at {where or '/'}")
        return
    if isinstance(value, float):
        raise CanonicalError(f"floating point number at {where or '/'}")
    if isinstance(value, list):
        for index, item in enumerate(value):
            _check_types(item, f"{where}/{index}")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise CanonicalError(f"non-string key at {where or '/'}")
            _check_types(item, f"{where}/{key}")
        return
    raise CanonicalError(f"unsupported type {type(value).__name__} at {where or '/'}")
