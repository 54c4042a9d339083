"""`fleet keys`, `fleet sign` and `fleet verify` as a user runs them, real
signify-openbsd reading fleet's keys and signatures (and the reverse), and the board's
verify-release.sh under /bin/sh with the same release folders."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from signing import canonical_bytes, parse_secret, parse_signature, sign

# One release maker for the unit and the integration trust tests.
sys.path.insert(0, str(Path(__file__).parents[1] / "unit"))
from trust_fixtures import make_release

pytestmark = pytest.mark.integration

FLEET = str(Path(sys.executable).with_name("fleet"))
SIGNIFY = shutil.which("signify-openbsd")
VERIFY_SH = Path(__file__).parents[2] / "fleet" / "device" / "verify-release.sh"
needs_signify = pytest.mark.skipif(SIGNIFY is None, reason="signify-openbsd not installed")


def fleet(*args: object, ok: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [FLEET, *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


def refused(*args: object) -> str:
    proc = fleet(*args, ok=False)
    assert proc.returncode == 5, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fleet: error: "), proc.stderr
    return lines[0]


def board_check(
    *args: object, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["/bin/sh", str(VERIFY_SH), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **(env or {})},
    )


def new_key(folder: Path, name: str) -> str:
    made = json.loads(fleet("keys", "generate", "--out", folder, "--name", name, "--json").stdout)
    return str(made["key_id"])


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, str]:
    folder = tmp_path / "keys"
    return {name: new_key(folder, name) for name in ("old", "new", "stranger")}


def trust_folder(tmp_path: Path, *names: str, revoked: str = "", threshold: int = 1) -> Path:
    folder = tmp_path / f"trust-{'-'.join(names)}-{threshold}"
    folder.mkdir()
    for name in names:
        shutil.copy(tmp_path / "keys" / f"{name}.pub", folder)
    if revoked:
        (folder / "revoked").write_text(f"# retired keys\n{revoked}\n")
    (folder / "threshold").write_text(f"{threshold}\n")
    return folder


def test_keys_generate_writes_0600_secret_and_never_overwrites(tmp_path: Path) -> None:
    key_id = new_key(tmp_path, "release")
    secret, public = tmp_path / "release.sec", tmp_path / "release.pub"
    assert secret.stat().st_mode & 0o777 == 0o600
    assert public.read_bytes().startswith(b"untrusted comment: ")
    before = secret.read_bytes()
    proc = fleet("keys", "generate", "--out", tmp_path, "--name", "release", ok=False)
    assert proc.returncode == 2
    assert proc.stderr == (
        f"fleet: error: {secret} already exists; choose another --name or move it away\n"
    )
    assert secret.read_bytes() == before
    human = fleet("keys", "generate", "--out", tmp_path).stdout
    assert human.startswith("key ") and key_id not in human


def test_sign_then_verify_and_signing_twice_adds_nothing(
    tmp_path: Path, keys: dict[str, str]
) -> None:
    release = tmp_path / "release"
    make_release(release, release=12)
    first = fleet("sign", release, "--key", tmp_path / "keys" / "old.sec").stdout
    assert first.startswith(f"signed {release} with key {keys['old']}")
    signature = (release / "signatures" / f"{keys['old']}.sig").read_bytes()
    again = fleet("sign", release, "--key", tmp_path / "keys" / "old.sec", "--json").stdout
    assert json.loads(again)["added"] is False
    assert os.listdir(release / "signatures") == [f"{keys['old']}.sig"]
    assert (release / "signatures" / f"{keys['old']}.sig").read_bytes() == signature

    out = fleet("verify", release, "--trust", tmp_path / "keys" / "old.pub", "--floor", 11,
                "--board", "qemu-virt-arm64").stdout  # fmt: skip
    assert out == (
        f"ok: hello 1.2.3 release 12 for qemu-virt-arm64; signed by {keys['old']} "
        "(1 of threshold 1); 2 payloads match\n"
    )
    report = json.loads(fleet("verify", release, "--trust", trust_folder(tmp_path, "old"),
                              "--json").stdout)  # fmt: skip
    assert report["ok"] is True and report["signatures"]["valid"] == [keys["old"]]


def test_verify_says_exactly_what_failed(tmp_path: Path, keys: dict[str, str]) -> None:
    release = tmp_path / "release"
    make_release(release, release=12, board="rpi4b")
    fleet("sign", release, "--key", tmp_path / "keys" / "old.sec")
    old, new = keys["old"], keys["new"]
    prefix = f"fleet: error: {release}: "

    assert refused("verify", release, "--trust", tmp_path / "keys" / "new.pub") == (
        prefix + f"0 valid signature(s) from trusted keys, need 1; signed by unknown key {old}"
    )
    assert refused("verify", release, "--trust", trust_folder(tmp_path, "old", revoked=old)) == (
        prefix + f"0 valid signature(s) from trusted keys, need 1; signed by revoked key {old}"
    )
    two = trust_folder(tmp_path, "old", "new", threshold=2)
    assert refused("verify", release, "--trust", two) == (
        prefix + "1 valid signature(s) from trusted keys, need 2"
    )
    fleet("sign", release, "--key", tmp_path / "keys" / "new.sec")
    fleet("verify", release, "--trust", two)
    assert refused("verify", release, "--trust", two, "--floor", 12) == (
        prefix + "release 12 is not above the board's floor 12; to go back to an older app, "
        "build it again with a higher release number"
    )
    assert refused("verify", release, "--trust", two, "--board", "rpi5") == (
        prefix + "release is for board 'rpi4b', not 'rpi5'"
    )

    rootfs = release / "rootfs.squashfs"
    rootfs.write_bytes(rootfs.read_bytes()[:-1] + b"!")
    assert refused("verify", release, "--trust", two).startswith(
        prefix + "payload rootfs (rootfs.squashfs) has SHA-256 "
    )
    rootfs.write_bytes(b"short")
    assert refused("verify", release, "--trust", two).endswith(
        "payload rootfs (rootfs.squashfs) has size 5 bytes, manifest says 650"
    )
    rootfs.unlink()
    assert refused("verify", release, "--trust", two) == (
        prefix + "payload rootfs (rootfs.squashfs) is missing"
    )

    manifest = release / "manifest.json"
    manifest.write_bytes(manifest.read_bytes().replace(b'"release": 12', b'"release": 13'))
    first = min(old, new)  # every signature now fails; the first by key id is named
    assert refused("verify", release, "--trust", two) == prefix + (
        f"signature {first}: by trusted key {first} does not verify (manifest or signature altered)"
    )


def test_malformed_manifest_is_named(tmp_path: Path, keys: dict[str, str]) -> None:
    release = tmp_path / "release"
    make_release(release)
    (release / "manifest.json").write_bytes(b'{"release": 5}\n')
    proc = fleet("sign", release, "--key", tmp_path / "keys" / "old.sec", ok=False)
    assert proc.returncode == 5
    assert proc.stderr == ("fleet: error: malformed manifest: manifest is not in canonical form\n")
    # Signed by a trusted key but not a fleet manifest (say, signed with signify by hand).
    secret = parse_secret((tmp_path / "keys" / "old.sec").read_bytes())
    data = canonical_bytes({"release": 5, "board": "rpi4b"})
    (release / "manifest.json").write_bytes(data)
    (release / "signatures").mkdir()
    (release / "signatures" / f"{keys['old']}.sig").write_bytes(sign(secret, data).to_bytes())
    assert refused("verify", release, "--trust", tmp_path / "keys" / "old.pub") == (
        f"fleet: error: {release}: malformed manifest: missing field format"
    )


def test_bad_trust_input_is_a_usage_error(tmp_path: Path, keys: dict[str, str]) -> None:
    release = tmp_path / "release"
    make_release(release)
    folder = trust_folder(tmp_path, "old")
    (folder / "revoked").write_text("not-a-key-id\n")
    proc = fleet("verify", release, "--trust", folder, ok=False)
    assert proc.returncode == 2
    assert proc.stderr == (
        f"fleet: error: {folder / 'revoked'} line 1: 'not-a-key-id' is not a key id "
        "(16 hex digits)\n"
    )
    proc = fleet("verify", release, "--trust", tmp_path / "nowhere", ok=False)
    assert proc.returncode == 2 and "does not exist" in proc.stderr


@needs_signify
def test_signify_openbsd_reads_fleet_keys_and_signatures(
    tmp_path: Path, keys: dict[str, str]
) -> None:
    release = tmp_path / "release"
    make_release(release)
    fleet("sign", release, "--key", tmp_path / "keys" / "old.sec")
    signature = release / "signatures" / f"{keys['old']}.sig"
    manifest = release / "manifest.json"
    check = [SIGNIFY, "-V", "-p", tmp_path / "keys" / "old.pub", "-x", signature, "-m", manifest]
    proc = subprocess.run(check, capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and proc.stdout == "Signature Verified\n"

    manifest.write_bytes(manifest.read_bytes().replace(b'"release": 7', b'"release": 8'))
    proc = subprocess.run(check, capture_output=True, text=True, check=False)
    assert proc.returncode != 0 and "signature verification failed" in proc.stderr

    wrong = [SIGNIFY, "-V", "-p", tmp_path / "keys" / "new.pub", "-x", signature, "-m", manifest]
    proc = subprocess.run(wrong, capture_output=True, text=True, check=False)
    assert proc.returncode != 0 and "checked against wrong key" in proc.stderr


@needs_signify
def test_fleet_reads_signify_made_keys_and_signatures(tmp_path: Path) -> None:
    subprocess.run([SIGNIFY, "-G", "-n", "-p", tmp_path / "s.pub", "-s", tmp_path / "s.sec"],
                   check=True)  # fmt: skip
    release = tmp_path / "release"
    make_release(release)
    fleet("sign", release, "--key", tmp_path / "s.sec")
    (sig,) = (release / "signatures").iterdir()
    by_signify = tmp_path / "by-signify.sig"
    subprocess.run([SIGNIFY, "-S", "-s", tmp_path / "s.sec", "-m", release / "manifest.json",
                    "-x", by_signify], check=True)  # fmt: skip
    # Ed25519 is deterministic: signify and fleet make the very same signature.
    assert parse_signature(by_signify.read_bytes()) == parse_signature(sig.read_bytes())
    sig.write_bytes(by_signify.read_bytes())
    fleet("verify", release, "--trust", tmp_path / "s.pub")


@needs_signify
def test_board_verifier_agrees_with_the_host(tmp_path: Path, keys: dict[str, str]) -> None:
    release = tmp_path / "release"
    manifest = make_release(release, release=20, board="rpi4b")
    fleet("sign", release, "--key", tmp_path / "keys" / "old.sec")
    trusted = trust_folder(tmp_path, "old")
    env = {"PATH": os.environ["PATH"]}

    proc = board_check(release, trusted, "", 1, 19, "rpi4b", env=env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "ok release 20"
    assert lines[1:] == [
        f"payload {p.name} {p.file} {p.size} {p.sha256}" for p in manifest.payloads
    ]

    def reason(*args: object, extra: dict[str, str] | None = None) -> str:
        proc = board_check(*args, env={**env, **(extra or {})})
        assert proc.returncode == 1 and proc.stdout == ""
        assert len(proc.stderr.splitlines()) == 1
        return proc.stderr.removeprefix("verify-release: ").rstrip("\n")

    assert reason(release, trusted, "", 1, 20) == "release 20 is not above the board's floor 20"
    assert reason(release, trusted, "", 1, 0, "rpi5") == "release is for board 'rpi4b', not 'rpi5'"
    assert reason(release, trusted, "", 2, 0) == "1 valid signature(s) from trusted keys, need 2"
    assert reason(release, trust_folder(tmp_path, "new"), "", 1, 0) == (
        f"0 valid signature(s) from trusted keys, need 1; signed by unknown key {keys['old']}"
    )
    revoked = tmp_path / "revoked"
    revoked.write_text(f"{keys['old']}  # leaked\n")
    assert reason(release, trusted, revoked, 1, 0) == (
        f"0 valid signature(s) from trusted keys, need 1; signed by revoked key {keys['old']}"
    )

    boot = release / "boot.vfat"
    original = boot.read_bytes()
    boot.write_bytes(b"X" + original[1:])
    assert reason(release, trusted, "", 1, 0).startswith("payload boot (boot.vfat) has SHA-256 ")
    # With VERIFY_PAYLOADS=no the caller hashes the written partitions itself.
    assert (
        board_check(release, trusted, "", 1, 0, env={**env, "VERIFY_PAYLOADS": "no"}).returncode
        == 0
    )
    boot.write_bytes(original + b"\0")
    assert reason(release, trusted, "", 1, 0) == (
        f"payload boot (boot.vfat) has size {len(original) + 1} bytes, "
        f"manifest says {len(original)}"
    )
    boot.write_bytes(original)

    path = release / "manifest.json"
    path.write_bytes(path.read_bytes().replace(b'"version": "1.2.3"', b'"version": "1.2.4"'))
    assert reason(release, trusted, "", 1, 30) == (
        f"signature {keys['old']}: by trusted key {keys['old']} does not verify "
        "(manifest or signature altered)"
    )


@needs_signify
def test_signed_downgrade_is_refused_by_host_and_board(
    tmp_path: Path, keys: dict[str, str]
) -> None:
    """A release once signed with the old "downgrade": true flag cannot be replayed below
    a board's floor: the host refuses the document, the board applies its floor."""
    release = tmp_path / "release"
    manifest = make_release(release, release=3)
    document = {**manifest.to_document(), "downgrade": True}
    (release / "manifest.json").write_bytes(canonical_bytes(document))
    fleet("sign", release, "--key", tmp_path / "keys" / "old.sec", ok=False)
    secret = parse_secret((tmp_path / "keys" / "old.sec").read_bytes())
    (release / "signatures").mkdir(exist_ok=True)
    data = (release / "manifest.json").read_bytes()
    (release / "signatures" / f"{keys['old']}.sig").write_bytes(sign(secret, data).to_bytes())
    trusted = trust_folder(tmp_path, "old")
    assert refused("verify", release, "--trust", trusted, "--floor", 9) == (
        f"fleet: error: {release}: malformed manifest: unknown field downgrade"
    )
    proc = board_check(release, trusted, "", 1, 9)
    assert proc.returncode == 1
    assert proc.stderr == "verify-release: release 3 is not above the board's floor 9\n"


@needs_signify
def test_junk_in_signatures_is_refused_by_host_and_board(
    tmp_path: Path, keys: dict[str, str]
) -> None:
    """One signature policy on both sides: an entry of signatures/ that is not a
    well-formed KEYID.sig refuses the release, though a valid trusted signature is there."""
    release = tmp_path / "release"
    make_release(release)
    fleet("sign", release, "--key", tmp_path / "keys" / "old.sec")
    trusted = trust_folder(tmp_path, "old")
    assert board_check(release, trusted, "", 1, 0).returncode == 0
    junk = {
        "notes.txt": b"hello\n",
        "0123456789abcdef.sig": b"untrusted comment: junk\nnot base64\n",
        "0123456789abcdef": b"no suffix\n",
    }
    for name, data in junk.items():
        path = release / "signatures" / name
        path.write_bytes(data)
        host = fleet("verify", release, "--trust", trusted, ok=False)
        board = board_check(release, trusted, "", 1, 0)
        assert host.returncode == 5, (name, host.stdout)
        assert board.returncode == 1, (name, board.stdout)
        assert "signature" in host.stderr and "signature" in board.stderr, (name, board.stderr)
        path.unlink()


@needs_signify
def test_key_rotation_on_host_and_board(tmp_path: Path, keys: dict[str, str]) -> None:
    """docs/trust.md's rotation, with the CLI and the board's script side by side."""
    board_keys = trust_folder(tmp_path, "old")
    revoked = board_keys / "revoked"
    r11, r12, r13 = (tmp_path / f"r{n}" for n in (11, 12, 13))
    make_release(r11, release=11)
    for name in ("old", "new"):
        fleet("sign", r11, "--key", tmp_path / "keys" / f"{name}.sec")
    fleet("verify", r11, "--trust", board_keys, "--floor", 10)
    assert board_check(r11, board_keys, revoked, 1, 10).returncode == 0

    shutil.copy(tmp_path / "keys" / "new.pub", board_keys)  # release 11 pins the new key
    make_release(r12, release=12)
    fleet("sign", r12, "--key", tmp_path / "keys" / "new.sec")
    fleet("verify", r12, "--trust", board_keys, "--floor", 11)
    assert board_check(r12, board_keys, revoked, 1, 11).returncode == 0

    revoked.write_text(f"{keys['old']}\n")  # release 12 revokes the old key
    make_release(r13, release=13)
    fleet("sign", r13, "--key", tmp_path / "keys" / "old.sec")
    assert "signed by revoked key" in refused("verify", r13, "--trust", board_keys, "--floor", 12)
    proc = board_check(r13, board_keys, revoked, 1, 12)
    assert proc.returncode == 1 and "signed by revoked key" in proc.stderr


BUSYBOX = shutil.which("busybox")


@needs_signify
@pytest.mark.skipif(BUSYBOX is None, reason="busybox not installed (Debian busybox-static)")
def test_board_verifier_with_busybox_only(tmp_path: Path, keys: dict[str, str]) -> None:
    """The board has busybox and signify-openbsd, nothing else: give the script exactly that."""
    tools = tmp_path / "bin"
    tools.mkdir()
    for applet in ("sh", "sed", "od", "base64", "sha256sum", "tr", "grep", "wc", "cut", "printf"):
        (tools / applet).symlink_to(BUSYBOX)  # type: ignore[arg-type]
    (tools / "signify-openbsd").symlink_to(SIGNIFY)  # type: ignore[arg-type]
    release = tmp_path / "release"
    make_release(release, release=5)
    fleet("sign", release, "--key", tmp_path / "keys" / "old.sec")
    trusted = trust_folder(tmp_path, "old")

    def run(*args: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(tools / "sh"), str(VERIFY_SH), *map(str, args)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={"PATH": str(tools)},
        )

    proc = run(release, trusted, "", 1, 4)
    assert proc.returncode == 0 and proc.stdout.startswith("ok release 5\n"), proc.stderr
    proc = run(release, trusted, "", 1, 5)
    assert proc.returncode == 1 and "is not above the board's floor 5" in proc.stderr
    (release / "rootfs.squashfs").write_bytes(b"evil" * 10)
    proc = run(release, trusted, "", 1, 4)
    assert proc.returncode == 1
    assert proc.stderr == (
        "verify-release: payload rootfs (rootfs.squashfs) has size 40 bytes, manifest says 650\n"
    )
    shutil.rmtree(release / "signatures")
    proc = run(release, trusted, "", 1, 4)
    assert proc.stderr == "verify-release: release is not signed (no signatures)\n"
