"""Property tests: any single flipped byte in the manifest, a signature or a payload,
and any truncation or extension of a payload, is refused with the right error; random
bytes in key and signature files raise only the trust core's own errors."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from trust_fixtures import make_release

from fleet import trust
from fleet.errors import ReleaseError
from fleet.release import manifest_from_bytes
from signing import (
    SigningError,
    TrustSet,
    generate,
    parse_public,
    parse_secret,
    parse_signature,
)

pytestmark = pytest.mark.unit

FEW = settings(max_examples=60, deadline=None)
KEY = generate()
TRUST = TrustSet.of([KEY.public])


@pytest.fixture(scope="module")
def release() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="fleet-trust-"))
    folder = root / "release"
    make_release(folder, boot=bytes(range(256)) * 4, rootfs=b"squash" * 300)
    (root / "k.sec").write_bytes(KEY.to_bytes())
    trust.sign_release(folder, root / "k.sec")
    trust.verify_release(folder, TRUST)
    yield folder
    shutil.rmtree(root)


@contextlib.contextmanager
def altered(path: Path, data: bytes) -> Iterator[None]:
    original = path.read_bytes()
    path.write_bytes(data)
    try:
        yield
    finally:
        path.write_bytes(original)


def flip(data: bytes, index: int, mask: int) -> bytes:
    index %= len(data)
    return data[:index] + bytes([data[index] ^ mask]) + data[index + 1 :]


def refusal(folder: Path) -> str:
    with pytest.raises(ReleaseError) as caught:
        trust.verify_release(folder, TRUST)
    return str(caught.value)


@FEW
@given(index=st.integers(min_value=0), mask=st.integers(1, 255))
def test_flipped_manifest_byte_breaks_the_signature(release: Path, index: int, mask: int) -> None:
    path = release / "manifest.json"
    with altered(path, flip(path.read_bytes(), index, mask)):
        message = refusal(release)
    assert message.endswith(
        f"signature {KEY.key_id}: by trusted key {KEY.key_id} does not verify "
        "(manifest or signature altered)"
    )


@FEW
@given(index=st.integers(min_value=0), mask=st.integers(1, 255))
def test_flipped_signature_byte_is_refused(release: Path, index: int, mask: int) -> None:
    path = release / "signatures" / f"{KEY.key_id}.sig"
    original = path.read_bytes()
    comment_end = original.index(b"\n")
    index %= len(original)
    with altered(path, flip(original, index, mask)):
        if len("untrusted comment: ") <= index < comment_end:
            # The comment is untrusted and covered by nothing: a flip there may leave a
            # valid file (the comment is only shown) or make it unreadable, nothing else.
            try:
                trust.verify_release(release, TRUST)
            except ReleaseError as exc:
                assert f"signature {KEY.key_id}: malformed" in str(exc)
            return
        message = refusal(release)
    assert f"signature {KEY.key_id}: " in message
    assert any(
        words in message for words in ("malformed", "does not verify", "holds a signature by key")
    )


@FEW
@given(which=st.sampled_from(["boot", "rootfs"]), index=st.integers(0), mask=st.integers(1, 255))
def test_flipped_payload_byte_fails_its_hash(
    release: Path, which: str, index: int, mask: int
) -> None:
    manifest = manifest_from_bytes((release / "manifest.json").read_bytes())
    payload = manifest.payload(which)
    path = release / payload.file
    with altered(path, flip(path.read_bytes(), index, mask)):
        message = refusal(release)
    assert f"payload {which} ({payload.file}) has SHA-256 " in message
    assert message.endswith(f", manifest says {payload.sha256}")


@FEW
@given(
    which=st.sampled_from(["boot", "rootfs"]),
    cut=st.integers(0, 2000),
    extra=st.binary(min_size=1, max_size=64),
    grow=st.booleans(),
)
def test_truncated_or_extended_payload_fails_its_size(
    release: Path, which: str, cut: int, extra: bytes, grow: bool
) -> None:
    manifest = manifest_from_bytes((release / "manifest.json").read_bytes())
    payload = manifest.payload(which)
    path = release / payload.file
    data = path.read_bytes()
    changed = data + extra if grow else data[: cut % len(data)]
    with altered(path, changed):
        message = refusal(release)
    assert message.endswith(
        f"payload {which} ({payload.file}) has size {len(changed)} bytes, "
        f"manifest says {payload.size}"
    )


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_signing_errors(data: bytes) -> None:
    for parse in (parse_public, parse_secret, parse_signature):
        with pytest.raises(SigningError):
            parse(data)


@settings(max_examples=200, deadline=None)
@given(index=st.integers(min_value=0), mask=st.integers(1, 255))
def test_flipped_key_files_raise_only_signing_errors_or_parse(index: int, mask: int) -> None:
    for data, parse in (
        (KEY.to_bytes(), parse_secret),
        (KEY.public.to_bytes(), parse_public),
    ):
        with contextlib.suppress(SigningError):
            parse(flip(data, index, mask))  # type: ignore[operator]
