"""Trust folders and key files on disk as fleet.trust reads them."""

from __future__ import annotations

from pathlib import Path

import pytest
from trust_fixtures import make_release

from fleet import trust
from fleet.errors import ReleaseError, UsageError
from signing import generate

pytestmark = pytest.mark.unit


def test_trust_folder_reads_keys_revoked_and_threshold(tmp_path: Path) -> None:
    a, b = generate(), generate()
    (tmp_path / "a.pub").write_bytes(a.public.to_bytes())
    (tmp_path / "b.pub").write_bytes(b.public.to_bytes())
    (tmp_path / "revoked").write_text(f"# old keys\n\n{b.key_id}  # leaked 2025-01\n")
    (tmp_path / "threshold").write_text("2\n")
    policy = trust.load_trust(tmp_path)
    assert set(policy.keys) == {a.key_id, b.key_id}
    assert policy.revoked == {b.key_id} and policy.threshold == 2
    single = trust.load_trust(tmp_path / "a.pub")
    assert list(single.keys) == [a.key_id] and single.threshold == 1


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("threshold", "0\n", "threshold must be a whole number from 1, not '0'"),
        ("threshold", "two\n", "threshold must be a whole number from 1, not 'two'"),
        ("revoked", "ABCDEF\n", "line 1: 'ABCDEF' is not a key id"),
        ("x.pub", "untrusted comment: x\n@@@@\n", r"x\.pub is not valid base64"),
    ],
)
def test_bad_trust_folder_names_file_and_fault(
    tmp_path: Path, name: str, content: str, message: str
) -> None:
    (tmp_path / "a.pub").write_bytes(generate().public.to_bytes())
    (tmp_path / name).write_text(content)
    with pytest.raises(UsageError, match=message):
        trust.load_trust(tmp_path)


def test_empty_trust_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"holds no \*\.pub keys"):
        trust.load_trust(tmp_path)


def test_sign_refuses_mismatched_payloads_and_never_duplicates(tmp_path: Path) -> None:
    key = generate()
    (tmp_path / "k.sec").write_bytes(key.to_bytes())
    release = tmp_path / "release"
    make_release(release)
    assert trust.sign_release(release, tmp_path / "k.sec") == key.key_id
    assert trust.sign_release(release, tmp_path / "k.sec") == key.key_id
    assert [p.name for p in (release / "signatures").iterdir()] == [f"{key.key_id}.sig"]
    (release / "boot.vfat").write_bytes(b"other")
    with pytest.raises(
        ReleaseError, match=r"refusing to sign: payload boot \(boot.vfat\) has size"
    ):
        trust.sign_release(release, tmp_path / "k.sec")


def test_stale_signature_is_replaced_when_the_manifest_changed(tmp_path: Path) -> None:
    key = generate()
    (tmp_path / "k.sec").write_bytes(key.to_bytes())
    release = tmp_path / "release"
    make_release(release, release=1)
    trust.sign_release(release, tmp_path / "k.sec")
    make_release(release, release=2)  # rebuilt in place: the old signature no longer fits
    trust.sign_release(release, tmp_path / "k.sec")
    trust.verify_release(release, trust.TrustSet.of([key.public]), floor=1)
