"""The manifest parser fuzzed: malformed JSON, wrong types, huge numbers, unknown fields
and duplicate keys give a ReleaseError ("malformed manifest: ...") and nothing else."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from trust_fixtures import make_release

from fleet.errors import ReleaseError
from fleet.release import manifest_from_bytes
from signing import CanonicalError, canonical_bytes, parse_canonical, read_facts

pytestmark = pytest.mark.unit

FEW = settings(max_examples=150, deadline=None)


@pytest.fixture(scope="module")
def document(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder: Path = tmp_path_factory.mktemp("m")
    make_release(folder)
    return json.loads((folder / "manifest.json").read_bytes())  # type: ignore[no-any-return]


scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**63 - 2, max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


def paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(doc, dict):
        for key, item in doc.items():
            found += paths(item, (*prefix, key))
    elif isinstance(doc, list):
        for index, item in enumerate(doc):
            found += paths(item, (*prefix, index))
    return found


def replaced(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    copy = json.loads(json.dumps(doc))
    target = copy
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return copy


def canonical_text(doc: Any) -> bytes:
    # The canonical layout written without canonical_bytes' type checks, so the parser
    # sees huge integers and floats exactly as an attacker could write them.
    return (json.dumps(doc, sort_keys=True, indent=1, ensure_ascii=True) + "\n").encode()


def only_release_error(data: bytes) -> None:
    try:
        manifest_from_bytes(data)
    except ReleaseError as exc:
        assert str(exc).startswith("malformed manifest: ")


def test_valid_manifest_round_trips(document: dict[str, Any]) -> None:
    data = canonical_bytes(document)
    assert manifest_from_bytes(data).to_bytes() == data
    assert read_facts(data).release == document["release"]


@FEW
@given(st.binary(max_size=400))
def test_random_bytes(data: bytes) -> None:
    only_release_error(data)


@FEW
@given(st.data())
def test_any_field_replaced_by_any_value(document: dict[str, Any], data: st.DataObject) -> None:
    path = data.draw(st.sampled_from(paths(document)))
    value = data.draw(values)
    text = canonical_text(replaced(document, path, value))
    only_release_error(text)
    with contextlib.suppress(CanonicalError):
        read_facts(text)


@FEW
@given(key=st.text(min_size=1, max_size=12), value=values)
def test_unknown_fields_are_refused(document: dict[str, Any], key: str, value: Any) -> None:
    if key in document:
        return
    with pytest.raises(ReleaseError, match="malformed manifest"):
        manifest_from_bytes(canonical_text({**document, key: value}))


@pytest.mark.parametrize(
    "number",
    [str(2**63), str(-(2**63) - 1), "1" + "0" * 400, "9" * 5000],
    ids=["2^63", "-2^63-1", "10^400", "5000-digits"],
)
def test_huge_numbers_are_refused(document: dict[str, Any], number: str) -> None:
    text = canonical_text(document).replace(b'"release": 7', f'"release": {number}'.encode())
    with pytest.raises(ReleaseError, match="malformed manifest"):
        manifest_from_bytes(text)


def test_duplicate_keys_are_refused(document: dict[str, Any]) -> None:
    text = canonical_text(document).replace(b' "release": 7\n', b' "release": 7,\n "release": 9\n')
    with pytest.raises(ReleaseError, match="malformed manifest: manifest has a duplicate key"):
        manifest_from_bytes(text)


@FEW
@given(
    indent=st.sampled_from([None, 0, 2, 4]),
    sort=st.booleans(),
    newline=st.booleans(),
    ascii_only=st.booleans(),
)
def test_other_encodings_of_the_same_document_are_refused(
    document: dict[str, Any], indent: int | None, sort: bool, newline: bool, ascii_only: bool
) -> None:
    text = json.dumps(document, indent=indent, sort_keys=sort, ensure_ascii=ascii_only)
    data = (text + ("\n" if newline else "")).encode()
    if data == canonical_bytes(document):
        return
    with pytest.raises(CanonicalError):
        parse_canonical(data)


@FEW
@given(st.text(max_size=200))
def test_malformed_json_text(text: str) -> None:
    only_release_error(text.encode("utf-8", errors="surrogatepass"))
    with contextlib.suppress(CanonicalError):
        parse_canonical(text.encode("utf-8", errors="surrogatepass"))


@pytest.mark.parametrize(
    "data",
    [
        b"[" * 50000 + b"]" * 50000,
        b'{"a": ' + b"[" * 50000,
        b'{"release": NaN}\n',
        b'{"release": Infinity}\n',
        b'{"release": 1.5}\n',
        b'{"release": 1e400}\n',
        b"\xef\xbb\xbf{}\n",
        b"null\n",
    ],
)
def test_hostile_json(data: bytes) -> None:
    with pytest.raises(ReleaseError, match="malformed manifest"):
        manifest_from_bytes(data)
