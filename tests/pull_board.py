"""A pull store and a board that pulls from it, on this machine: a folder store behind a
real nginx on loopback (fleet.pull.nginx) and the board's own pull script run in an agent
tree (tests/agent_tree.py), so every check the board makes is the board's code."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from fleet import trust as trustlib
from fleet.pull import publish as pub
from fleet.pull.store import DirStore
from tests.agent_tree import AgentTree, available

# What a pulling board in the agent tree behind a real nginx takes.
NEEDS_PULL_BOARD = pytest.mark.skipif(
    not available() or shutil.which("nginx") is None,
    reason="needs root, busybox, signify-openbsd, gcc, nginx",
)

DAY = 86400


@dataclass
class Keys:
    release_sec: Path
    release_pub: Path
    timestamp_sec: Path
    timestamp_pub: Path


def make_keys(folder: Path) -> Keys:
    release = trustlib.generate_key(folder, "release")
    stamp = trustlib.generate_key(folder, "timestamp")
    return Keys(release.secret, release.public, stamp.secret, stamp.public)


def pulling_board(root: Path, keys: Keys, url: str, group: str = "lobby",
                  hostname: str = "board-1") -> AgentTree:
    tree = AgentTree(root, [keys.release_pub])
    pull_keys = tree.root / "etc/fleet/pull-keys"
    pull_keys.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(keys.timestamp_pub, pull_keys / "timestamp.pub")
    (tree.root / "proc/sys/kernel/hostname").write_text(hostname + "\n")
    set_pull(tree, url, group)
    return tree


def pull(tree: AgentTree) -> tuple[int, str]:
    """One poll of the board's own pull code: its exit status and what it printed."""
    proc = tree.run("once", program="/etc/fleet/pull", timeout=120)
    return proc.returncode, (proc.stdout + proc.stderr).decode()


def set_pull(tree: AgentTree, url: str, group: str) -> None:
    """Provisioning's partition-1 file, as fleet provision --pull-url writes it."""
    settings = tree.firmware / "fleet"
    import subprocess

    subprocess.run(["mount", "-o", "remount,rw", str(tree.firmware)], check=True)
    try:
        settings.mkdir(exist_ok=True)
        (settings / "pull").write_text(f"url={url}\ngroup={group}\ninterval=1\njitter=0\n")
    finally:
        subprocess.run(["mount", "-o", "remount,ro", str(tree.firmware)], check=True)


def publish(store: Path, release: Path, keys: Keys, group: str = "lobby", percent: int = 100,
            **kw: object) -> pub.Published:
    return pub.publish(
        DirStore(store), release, group, percent,
        [trustlib.load_secret_key(keys.release_sec)],
        trustlib.load_secret_key(keys.timestamp_sec),
        int(kw.pop("expires_s", 30 * DAY)),  # type: ignore[call-overload]
        int(kw.pop("timestamp_expires_s", DAY)),  # type: ignore[call-overload]
        **kw,  # type: ignore[arg-type]
    )


def ca_and_server_cert(folder: Path, name: str) -> tuple[Path, Path, Path]:
    """A CA and a certificate for ``name`` that it signed: (CA cert, server cert, key)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str,
             signer: ec.EllipticCurvePrivateKey, ca: bool) -> x509.Certificate:
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(subject)]), critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    folder.mkdir(parents=True, exist_ok=True)
    pem = serialization.Encoding.PEM
    (folder / "ca.pem").write_bytes(cert("fleet test CA", ca_key, "fleet test CA", ca_key, True)
                                    .public_bytes(pem))
    (folder / "server.pem").write_bytes(cert(name, key, "fleet test CA", ca_key, False)
                                        .public_bytes(pem))
    (folder / "server.key").write_bytes(key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return folder / "ca.pem", folder / "server.pem", folder / "server.key"
