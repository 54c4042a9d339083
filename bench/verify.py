"""Hashing, verification and signing on a 256 MiB release, beside the peers run on the
same files in the same run: ``sha256sum`` for hashing, ``rauc bundle`` for signing.

Prints each time and the ratios. Target: fleet hashes at >= 0.9x sha256sum's throughput.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fleet import hashing, trust
from fleet.release import Health, Manifest, Payload, write_manifest

MIB = 1 << 20
ROOTFS_MIB = 256
BOOT_MIB = 16
FLEET = str(Path(sys.executable).with_name("fleet"))


def best(runs: int, action: Callable[[], object]) -> float:
    """Best wall time of ``runs``: the least disturbed by other work on a shared machine."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return min(times)


def write_random(path: Path, mib: int) -> None:
    with path.open("wb") as handle:
        for _ in range(mib):
            handle.write(os.urandom(MIB))


def make_release(folder: Path) -> None:
    folder.mkdir()
    write_random(folder / "rootfs.squashfs", ROOTFS_MIB)
    write_random(folder / "boot.vfat", BOOT_MIB)
    payloads = []
    for name, file in (("boot", "boot.vfat"), ("rootfs", "rootfs.squashfs")):
        size, digest = hashing.hash_file(folder / file)
        payloads.append(Payload(name, file, size, digest))
    manifest = Manifest(
        app="bench",
        version="1.0",
        release=1,
        board="qemu-virt-arm64",
        arch="aarch64",
        payloads=tuple(payloads),
        health=Health(http=None, command="true", port=80, timeout=60),
    )
    write_manifest(folder, manifest)


def make_cert(folder: Path) -> tuple[Path, Path]:
    """A throwaway self-signed certificate for rauc's CMS signature."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fleet bench")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = folder / "rauc.key.pem", folder / "rauc.cert.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def rauc_input(folder: Path, release: Path) -> Path:
    content = folder / "rauc-content"
    content.mkdir()
    for file in ("boot.vfat", "rootfs.squashfs"):
        os.link(release / file, content / file)
    (content / "manifest.raucm").write_text(
        "[update]\ncompatible=fleet-bench\nversion=1.0\n\n"
        "[bundle]\nformat=plain\n\n"
        "[image.boot]\nfilename=boot.vfat\n\n"
        "[image.rootfs]\nfilename=rootfs.squashfs\n"
    )
    return content


def sha256sum(*paths: Path) -> None:
    subprocess.run(["sha256sum", *paths], check=True, stdout=subprocess.DEVNULL)


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="fleet-bench-verify-", dir="/var/tmp"))
    try:
        return run(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(work: Path) -> int:
    release = work / "release"
    make_release(release)
    rootfs = release / "rootfs.squashfs"
    boot = release / "boot.vfat"
    key_dir = work / "keys"
    made = trust.generate_key(key_dir, "bench")
    policy = trust.load_trust(made.public)
    sha256sum(rootfs, boot)  # warm the page cache for everyone alike

    peer = best(3, lambda: sha256sum(rootfs))
    ours = best(3, lambda: hashing.hash_file(rootfs))

    def file_digest() -> None:
        with rootfs.open("rb") as handle:
            hashlib.file_digest(handle, "sha256")

    raw = best(3, file_digest)
    print(f"hash {ROOTFS_MIB} MiB file:")
    print(f"  sha256sum            {peer:7.3f} s  {ROOTFS_MIB / peer:8.1f} MiB/s")
    print(f"  fleet hash_file      {ours:7.3f} s  {ROOTFS_MIB / ours:8.1f} MiB/s")
    print(f"  hashlib.file_digest  {raw:7.3f} s  {ROOTFS_MIB / raw:8.1f} MiB/s")
    print(f"  ratio fleet/sha256sum throughput: {peer / ours:.2f}x (target >= 0.90x)")

    total = ROOTFS_MIB + BOOT_MIB
    trust.sign_release(release, made.secret)
    peer_all = best(3, lambda: sha256sum(rootfs, boot))
    verify = best(3, lambda: trust.verify_release(release, policy))
    print(f"verify whole release ({total} MiB: signature, manifest, both payloads):")
    print(f"  sha256sum of payloads {peer_all:7.3f} s  {total / peer_all:8.1f} MiB/s")
    print(f"  fleet verify_release  {verify:7.3f} s  {total / verify:8.1f} MiB/s")
    print(f"  ratio fleet/sha256sum throughput: {peer_all / verify:.2f}x")

    signature = release / "signatures" / f"{made.key_id}.sig"

    def fleet_sign() -> None:
        signature.unlink(missing_ok=True)
        subprocess.run([FLEET, "sign", release, "--key", made.secret], check=True,
                       stdout=subprocess.DEVNULL)  # fmt: skip

    rauc = shutil.which("rauc")
    fleet_time = best(2, fleet_sign)
    print(f"sign the same {total} MiB of payloads (wall time, best of 2):")
    print(f"  fleet sign (CLI, hashes payloads, then signs)  {fleet_time:7.3f} s")
    if rauc is None:
        print("  rauc bundle: not installed (Debian package rauc), skipped")
        return 0
    key, cert = make_cert(work)
    content = rauc_input(work, release)
    bundle = work / "bench.raucb"

    def rauc_bundle() -> None:
        bundle.unlink(missing_ok=True)
        subprocess.run(
            [rauc, "bundle", f"--cert={cert}", f"--key={key}", f"--keyring={cert}",
             content, bundle],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    rauc_time = best(2, rauc_bundle)
    print(f"  rauc bundle (hashes, mksquashfs, CMS sign)    {rauc_time:7.3f} s")
    print(f"  ratio rauc/fleet time: {rauc_time / fleet_time:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
