"""The trust core on its own: keys and signatures in signify's formats, the policy
(threshold, unknown, revoked, bad), anti-rollback, board match and key rotation."""

from __future__ import annotations

import base64

import pytest

from signing import (
    BoardMismatchError,
    KeyFormatError,
    RollbackError,
    SignatureError,
    SignatureFormatError,
    TrustSet,
    canonical_bytes,
    check_signatures,
    generate,
    parse_public,
    parse_secret,
    parse_signature,
    sign,
    signature_valid,
    verify_release,
)
from signing.canonical import CanonicalError

pytestmark = pytest.mark.unit


def manifest(release: int = 5, board: str = "rpi4b", **extra: object) -> bytes:
    return canonical_bytes(
        {"format": 1, "release": release, "board": board, "payloads": [], **extra}
    )


def sigs(message: bytes, *keys: object) -> dict[str, bytes]:
    return {k.key_id: sign(k, message).to_bytes() for k in keys}  # type: ignore[attr-defined]


def test_key_files_round_trip_and_key_id_is_the_key_number() -> None:
    key = generate()
    assert len(key.key_id) == 16
    assert parse_secret(key.to_bytes()) == key
    public = parse_public(key.public.to_bytes())
    assert public == key.public
    blob = base64.b64decode(key.public.to_bytes().splitlines()[1])
    assert blob[:2] == b"Ed" and blob[2:10].hex() == key.key_id and len(blob) == 42


def test_signature_file_is_signify_format_over_exact_bytes() -> None:
    key = generate()
    data = manifest()
    text = sign(key, data).to_bytes()
    head, body, end = text.split(b"\n")
    assert head.startswith(b"untrusted comment: ") and end == b""
    blob = base64.b64decode(body)
    assert blob[:2] == b"Ed" and blob[2:10] == key.keynum and len(blob) == 74
    signature = parse_signature(text)
    assert signature_valid(key.public, signature, data)
    assert not signature_valid(key.public, signature, data + b" ")
    assert not signature_valid(generate().public, signature, data)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "exactly two lines"),
        (b"untrusted comment: x\n", "exactly two lines"),
        (b"comment: x\nRWQ=\n", "does not start with"),
        (b"untrusted comment: x\n!!!!\n", "not valid base64"),
        (b"untrusted comment: x\nRWQ=\n", "holds 2 bytes"),
        (b"untrusted comment: x\xff\nRWQ=\n", "not ASCII"),
        (b"untrusted comment: x\nRWQ=\n\n", "exactly two lines"),
    ],
)
def test_malformed_signature_files_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(SignatureFormatError, match=message):
        parse_signature(data)


def test_non_canonical_base64_padding_bits_are_refused() -> None:
    text = sign(generate(), b"m").to_bytes()
    head, body, _ = text.split(b"\n")
    # 74 bytes end in "X=" where X carries 2 unused bits: set one of them.
    last = body[-2:-1]
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    tweaked = alphabet[alphabet.index(last) ^ 1 : alphabet.index(last) ^ 1 + 1]
    forged = head + b"\n" + body[:-2] + tweaked + b"=\n"
    assert base64.b64decode(forged.split(b"\n")[1]) == base64.b64decode(body)
    with pytest.raises(SignatureFormatError, match="canonical base64"):
        parse_signature(forged)


def test_secret_key_checks() -> None:
    key = generate()
    blob = bytearray(base64.b64decode(key.to_bytes().splitlines()[1]))
    broken = bytes(blob[:-1]) + bytes([blob[-1] ^ 1])
    with pytest.raises(KeyFormatError, match="checksum"):
        parse_secret(b"untrusted comment: k\n" + base64.b64encode(broken) + b"\n")
    blob[7] = 42  # KDF rounds: a passphrase-protected key
    with pytest.raises(KeyFormatError, match="passphrase"):
        parse_secret(b"untrusted comment: k\n" + base64.b64encode(bytes(blob)) + b"\n")
    with pytest.raises(KeyFormatError):
        parse_public(key.to_bytes())


def test_threshold_counts_distinct_trusted_keys() -> None:
    a, b, c = generate(), generate(), generate()
    data = manifest()
    trust = TrustSet.of([a.public, b.public], threshold=2)
    report = check_signatures(data, sigs(data, a, c), trust)
    assert report.valid == (a.key_id,) and report.unknown == (c.key_id,)
    assert not report.ok
    assert report.problem() == (
        f"1 valid signature(s) from trusted keys, need 2; signed by unknown key {c.key_id}"
    )
    assert check_signatures(data, sigs(data, a, b), trust).ok


def test_unsigned_release_says_so() -> None:
    trust = TrustSet.of([generate().public])
    with pytest.raises(SignatureError, match=r"^release is not signed \(no signatures\)$"):
        verify_release(manifest(), {}, trust)


def test_revoked_key_is_not_counted_even_when_its_signature_verifies() -> None:
    old = generate()
    data = manifest()
    trust = TrustSet.of([old.public], revoked=[old.key_id])
    report = check_signatures(data, sigs(data, old), trust)
    assert report.revoked == (old.key_id,) and not report.ok
    with pytest.raises(SignatureError, match=f"signed by revoked key {old.key_id}"):
        verify_release(data, sigs(data, old), trust)


def test_bad_signature_by_trusted_key_is_fatal_even_above_threshold() -> None:
    a, b = generate(), generate()
    data = manifest()
    signatures = sigs(data, a)
    signatures[b.key_id] = sign(b, data + b"x").to_bytes()
    trust = TrustSet.of([a.public, b.public])
    with pytest.raises(SignatureError, match=f"by trusted key {b.key_id} does not verify"):
        verify_release(data, signatures, trust)


def test_signature_filed_under_another_key_id_is_refused() -> None:
    a, b = generate(), generate()
    data = manifest()
    signatures = {b.key_id: sign(a, data).to_bytes()}
    report = check_signatures(data, signatures, TrustSet.of([a.public, b.public]))
    assert report.bad == ((b.key_id, f"holds a signature by key {a.key_id}, not {b.key_id}"),)


def test_floor_only_rises() -> None:
    key = generate()
    trust = TrustSet.of([key.public])
    for release, floor in ((6, 5), (1, None)):
        data = manifest(release)
        assert verify_release(data, sigs(data, key), trust, floor=floor).release == release
    data = manifest(5)
    with pytest.raises(RollbackError, match="release 5 is not above the board's floor 5"):
        verify_release(data, sigs(data, key), trust, floor=5)
    # A document signed under the old rule ("downgrade": true skipped the floor) is
    # refused whatever its number, so no signed downgrade can be replayed.
    for floor in (5, 1, None):
        data = manifest(3, downgrade=True)
        with pytest.raises(CanonicalError, match="field downgrade is no longer allowed"):
            verify_release(data, sigs(data, key), trust, floor=floor)


def test_board_must_match() -> None:
    key = generate()
    data = manifest(board="rpi4b")
    with pytest.raises(BoardMismatchError, match="release is for board 'rpi4b', not 'rpi5'"):
        verify_release(data, sigs(data, key), TrustSet.of([key.public]), board="rpi5")


def test_signature_checks_come_before_reading_the_manifest() -> None:
    key = generate()
    with pytest.raises(SignatureError, match="does not verify"):
        verify_release(b"not json", {key.key_id: sign(key, b"other").to_bytes()},
                       TrustSet.of([key.public]))  # fmt: skip


def test_trust_set_rejects_nonsense() -> None:
    key = generate()
    with pytest.raises(KeyFormatError, match="threshold"):
        TrustSet.of([key.public], threshold=0)
    with pytest.raises(KeyFormatError, match="not 16 lowercase hex"):
        TrustSet.of([key.public], revoked=["nope"])


def test_key_rotation_story() -> None:
    """The documented rotation (docs/trust.md), step by step, as a board sees it."""
    old, new = generate(), generate()
    board = TrustSet.of([old.public])
    floor = 10

    # 1. Release 11 carries the old and the new key's signatures; the board (old key
    #    only) installs it: the new key's signature is merely unknown.
    r11 = manifest(11)
    signed = sigs(r11, old, new)
    report = check_signatures(r11, signed, board)
    assert report.valid == (old.key_id,) and report.unknown == (new.key_id,)
    verify_release(r11, signed, board, floor=floor)
    floor = 11
    # 2. Release 11's rootfs pins both keys: from then on the board trusts the new key.
    board = board.with_keys([new.public])

    # 3. Release 12 is signed by the new key only and installs.
    r12 = manifest(12)
    verify_release(r12, sigs(r12, new), board, floor=floor)
    floor = 12
    # 4. Release 12 (or a later one) also ships the old key id in its revocation list.
    board = board.with_revoked([old.key_id])

    # 5. From then on the old key's signatures are refused, alone or for a replay.
    r13 = manifest(13)
    with pytest.raises(SignatureError, match=f"signed by revoked key {old.key_id}"):
        verify_release(r13, sigs(r13, old), board, floor=floor)
    # A replay of release 11 fails twice over; the floor refuses it even though the new
    # key's signature on it is still valid.
    with pytest.raises(RollbackError):
        verify_release(r11, signed, board, floor=floor)
    # The new key keeps working, with or without the old key's signature beside it.
    verify_release(r13, sigs(r13, old, new), board, floor=floor)
