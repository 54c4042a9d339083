"""The image report: Debian licenses to SPDX, the SPDX 2.3 document, the summary."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import pytest

from fleet.image import report as rpt
from fleet.image.report import FileEntry, ImageReport, PackageEntry, Payload

pytestmark = pytest.mark.unit

DEP5 = """\
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: foo
Source: https://example.org/foo

Files: *
Copyright: 2001 A. Author
License: GPL-2+
 This program is free software; you can redistribute it.
 .
 On Debian systems, see /usr/share/common-licenses/GPL-2.

Files: lib/*
Copyright: 2003 B. Author
License: BSD-3-clause and Expat

Files: debian/*
Copyright: 2010 A. Packager
License: WTFPL

Files: compat/*
Copyright: 2004 C. Author
License: GPL-2+ or Artistic

License: BSD-3-clause
 Redistribution and use in source and binary forms ...
"""


def test_license_of_a_dep5_file() -> None:
    assert rpt.license_of(DEP5) == (
        "GPL-2.0-or-later AND BSD-3-Clause AND MIT AND (GPL-2.0-or-later OR Artistic-1.0-Perl)"
    )


def test_license_of_a_free_form_file_is_noassertion() -> None:
    text = "This is the Debian prepackaged version of foo.\n\nCopyright: 1999 someone\n"
    assert rpt.license_of(text) == "NOASSERTION"
    assert rpt.license_of("") == "NOASSERTION"


@pytest.mark.parametrize(
    ("debian", "spdx"),
    [
        ("GPL-2", "GPL-2.0-only"),
        ("GPL-3+", "GPL-3.0-or-later"),
        ("LGPL-2.1+", "LGPL-2.1-or-later"),
        ("Expat", "MIT"),
        ("public-domain", "LicenseRef-public-domain"),
        (
            "GPL-2+ or Artistic-2.0, and BSD-3-clause",
            "(GPL-2.0-or-later OR Artistic-2.0) AND BSD-3-Clause",
        ),
        ("LGPL-2.1+ and (GPL-2 or MPL-1.1)", "LGPL-2.1-or-later AND (GPL-2.0-only OR MPL-1.1)"),
        ("GPL-3+ with Bison exception", "GPL-3.0-or-later WITH Bison-exception-2.2"),
        ("GPL-2+ with OpenSSL exception", "LicenseRef-GPL-2-plus-with-OpenSSL-exception"),
        ("", "NOASSERTION"),
    ],
)
def test_convert_expression(debian: str, spdx: str) -> None:
    assert rpt.convert_expression(debian) == spdx


def test_package_license_follows_a_doc_symlink_inside_the_root(tmp_path: Path) -> None:
    doc = tmp_path / "usr/share/doc"
    (doc / "libfoo-common").mkdir(parents=True)
    (doc / "libfoo-common/copyright").write_text(DEP5.split("\n\nFiles: lib")[0] + "\n")
    os.symlink("/usr/share/doc/libfoo-common", doc / "libfoo1")
    assert rpt.package_license(tmp_path, "libfoo1") == "GPL-2.0-or-later"
    assert rpt.package_license(tmp_path, "absent") == "NOASSERTION"


def test_file_entries_hash_the_bytes(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin/busybox").write_bytes(b"x" * 3000)
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/motd").write_bytes(b"hi\n")
    os.symlink("busybox", tmp_path / "bin/sh")
    os.symlink("bin", tmp_path / "sbin")
    entries = rpt.tree_entries(tmp_path, lambda p: "busybox" if p.startswith("/bin") else "fleet")
    assert entries == [
        FileEntry(
            "/bin/busybox",
            3000,
            hashlib.sha256(b"x" * 3000).hexdigest(),
            hashlib.sha1(b"x" * 3000).hexdigest(),
            "busybox",
        ),
        FileEntry(
            "/etc/motd",
            3,
            hashlib.sha256(b"hi\n").hexdigest(),
            hashlib.sha1(b"hi\n").hexdigest(),
            "fleet",
        ),
    ]


def sample() -> ImageReport:
    def entry(path: str, size: int, origin: str) -> FileEntry:
        return FileEntry(path, size, hashlib.sha256(path.encode()).hexdigest(), "ab" * 20, origin)

    return ImageReport(
        app="hello-c",
        version="1.2.3",
        board="qemu-virt-arm64",
        files=(
            entry("/usr/lib/aarch64-linux-gnu/libc.so.6", 1_600_000, "libc6"),
            entry("/bin/busybox", 2_000_000, "busybox"),
            entry("/app/bin/hello-c", 70_000, "app"),
            entry("/etc/fleet/agent", 9_000, "fleet"),
            entry("/usr/lib/libstdc++.so.6", 5, "libstdc++6"),
        ),
        packages=(
            PackageEntry("libc6", "2.36-9+deb12u4", "arm64", "LGPL-2.1-or-later"),
            PackageEntry("busybox", "1:1.35.0-4+b3", "arm64", "GPL-2.0-only"),
            PackageEntry("libstdc++6", "12.2.0-14", "arm64", "LicenseRef-GPL-3-plus-with-GCC"),
        ),
        payloads=(
            Payload("boot.vfat", 12 * 1024 * 1024),
            Payload("rootfs.squashfs", 3_500_000),
            Payload("disk.img", 256 * 1024 * 1024, counted=False),
        ),
    )


def test_spdx_document_has_the_required_fields() -> None:
    doc = rpt.spdx_document(sample(), epoch=1_700_000_000)
    for key in (
        "spdxVersion",
        "dataLicense",
        "SPDXID",
        "name",
        "documentNamespace",
        "creationInfo",
    ):
        assert doc[key], key
    assert doc["spdxVersion"] == "SPDX-2.3"
    assert doc["dataLicense"] == "CC0-1.0"
    assert doc["SPDXID"] == "SPDXRef-DOCUMENT"
    assert doc["creationInfo"]["created"] == "2023-11-14T22:13:20Z"
    assert doc["creationInfo"]["creators"] == ["Tool: fleet-0.1.0"]
    assert doc["documentNamespace"].startswith("https://spdx.org/spdxdocs/fleet/")

    ids = [e["SPDXID"] for e in doc["packages"] + doc["files"]]
    assert len(ids) == len(set(ids))
    assert all(re.fullmatch(r"SPDXRef-[A-Za-z0-9.-]+", i) for i in ids)
    for package in doc["packages"]:
        for key in (
            "name",
            "downloadLocation",
            "licenseConcluded",
            "licenseDeclared",
            "copyrightText",
        ):
            assert key in package, (package["name"], key)
        if package["filesAnalyzed"]:
            assert len(package["packageVerificationCode"]["packageVerificationCodeValue"]) == 40
    by_name = {p["name"]: p for p in doc["packages"]}
    assert by_name["hello-c-image-qemu-virt-arm64"]["filesAnalyzed"] is False
    assert by_name["libc6"]["filesAnalyzed"] is True
    code = hashlib.sha1(("ab" * 20).encode()).hexdigest()
    assert by_name["libc6"]["packageVerificationCode"] == {"packageVerificationCodeValue": code}
    assert by_name["libc6"]["versionInfo"] == "2.36-9+deb12u4"
    assert by_name["libc6"]["licenseDeclared"] == "LGPL-2.1-or-later"
    assert by_name["busybox"]["externalRefs"][0]["referenceLocator"] == (
        "pkg:deb/debian/busybox@1%3A1.35.0-4%2Bb3?arch=arm64"
    )
    for file in doc["files"]:
        assert file["fileName"].startswith("./")
        algorithms = {c["algorithm"] for c in file["checksums"]}
        assert algorithms == {"SHA1", "SHA256"}

    known = {"SPDXRef-DOCUMENT", *ids}
    for rel in doc["relationships"]:
        assert rel["spdxElementId"] in known and rel["relatedSpdxElement"] in known
    describes = [r for r in doc["relationships"] if r["relationshipType"] == "DESCRIBES"]
    assert describes == [
        {
            "spdxElementId": "SPDXRef-DOCUMENT",
            "relationshipType": "DESCRIBES",
            "relatedSpdxElement": "SPDXRef-Image",
        }
    ]
    # Every file belongs to the package it came from.
    file_id = next(f["SPDXID"] for f in doc["files"] if f["fileName"] == "./bin/busybox")
    owner = next(
        r["spdxElementId"] for r in doc["relationships"] if r["relatedSpdxElement"] == file_id
    )
    assert owner == by_name["busybox"]["SPDXID"]
    # A LicenseRef used anywhere is declared.
    assert [e["licenseId"] for e in doc["hasExtractedLicensingInfos"]] == [
        "LicenseRef-GPL-3-plus-with-GCC"
    ]


def test_spdx_document_is_deterministic_and_namespace_follows_content() -> None:
    one = json.dumps(rpt.spdx_document(sample(), 0), sort_keys=True)
    two = json.dumps(rpt.spdx_document(sample(), 0), sort_keys=True)
    assert one == two
    other = sample()
    changed = ImageReport(
        other.app, "1.2.4", other.board, other.files, other.packages, other.payloads
    )
    assert (
        rpt.spdx_document(changed, 0)["documentNamespace"]
        != rpt.spdx_document(sample(), 0)["documentNamespace"]
    )


def test_write_report_writes_both_files(tmp_path: Path) -> None:
    sbom, summary = rpt.write_report(sample(), tmp_path / "out", epoch=0)
    assert sbom == tmp_path / "out/sbom.spdx.json"
    assert json.loads(sbom.read_text())["spdxVersion"] == "SPDX-2.3"
    text = summary.read_text()
    assert text.startswith("fleet image report: hello-c 1.2.3 for board qemu-virt-arm64\n")
    assert "boot.vfat" in text and "12.0 MiB" in text and "12,582,912 bytes" in text
    assert "disk.img" in text and "256.0 MiB" in text
    assert re.search(r"total \(release payloads\) +15\.3 MiB", text)
    assert "Contents: 5 files, 3.5 MiB uncompressed, from 3 Debian packages" in text
    lines = text.splitlines()
    largest = lines.index("Largest files")
    assert lines[largest + 1].endswith("/bin/busybox  (busybox)")
    packages = lines.index("Packages by size in the image")
    assert "busybox 1:1.35.0-4+b3 arm64  [GPL-2.0-only]" in lines[packages + 1]
    # Same input, same bytes.
    again, again_summary = rpt.write_report(sample(), tmp_path / "again", epoch=0)
    assert again.read_bytes() == sbom.read_bytes()
    assert again_summary.read_bytes() == summary.read_bytes()


def test_human_sizes() -> None:
    assert rpt.human(512) == "512 B"
    assert rpt.human(1536) == "1.5 KiB"
    assert rpt.human(5 * 1024**3) == "5.0 GiB"
