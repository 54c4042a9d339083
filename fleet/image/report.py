"""The image report: what is inside an image, file by file and package by package.

Two outputs from one model: ``sbom.spdx.json``, an SPDX 2.3 document that SBOM tools
read (packages with versions and declared licenses, files with SHA-1 and SHA-256,
relationships), and ``report.txt``, a short summary with sizes for people. Both are
deterministic: the creation time comes from SOURCE_DATE_EPOCH, never the clock, and the
document namespace is derived from the document's own content.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fleet import __version__
from fleet.atomic import write_text
from fleet.hashing import hash_file
from fleet.image.chroot_path import resolve_file

SBOM_NAME = "sbom.spdx.json"
SUMMARY_NAME = "report.txt"
NOASSERTION = "NOASSERTION"
APP_ORIGIN = "app"
FLEET_ORIGIN = "fleet"
TOP = 15


@dataclass(frozen=True)
class FileEntry:
    path: str  # absolute path in the image, e.g. /app/bin/hello-c
    size: int
    sha256: str
    sha1: str  # SPDX 2.3 requires a SHA-1 for every file
    origin: str  # the Debian package it came from, or "app", or "fleet"


@dataclass(frozen=True)
class PackageEntry:
    name: str
    version: str
    architecture: str
    license: str = NOASSERTION  # an SPDX license expression, see license_of()


@dataclass(frozen=True)
class Payload:
    name: str  # e.g. boot.vfat, rootfs.squashfs, disk.img
    size: int
    # False for what is listed but not shipped in a release (the disk image holds the
    # payloads, so adding it to the total would count them twice).
    counted: bool = True


@dataclass(frozen=True)
class ImageReport:
    app: str
    version: str
    board: str
    files: tuple[FileEntry, ...]
    packages: tuple[PackageEntry, ...]
    payloads: tuple[Payload, ...]


def file_entry(image_path: str, host_path: Path, origin: str) -> FileEntry:
    """Hash one file of the image (read from ``host_path``) into a report entry."""
    sha1 = hashlib.sha1(usedforsecurity=False)
    size, sha256 = hash_file(host_path, also=[sha1])
    path = "/" + image_path.lstrip("/")
    return FileEntry(path, size, sha256, sha1.hexdigest(), origin)


def tree_entries(root: Path, origin_of: Callable[[str], str]) -> list[FileEntry]:
    """Entries for every regular file under ``root`` (symlinks and folders are not
    files in SPDX's sense); ``origin_of`` maps an image path like /bin/busybox to its
    origin."""
    hosts: list[Path] = []
    # os.walk does not descend into symlinked folders (/lib -> usr/lib), so nothing
    # is listed twice.
    for folder, _dirs, names in os.walk(root):
        hosts += [Path(folder) / n for n in names]
    entries = []
    for host in sorted(hosts):
        if host.is_symlink() or not host.is_file():
            continue
        image_path = "/" + host.relative_to(root).as_posix()
        entries.append(file_entry(image_path, host, origin_of(image_path)))
    return entries


# --- licenses -----------------------------------------------------------------------

# Debian's short names (DEP-5) that differ from SPDX's identifiers.
_DEBIAN_TO_SPDX = {
    "expat": "MIT",
    "artistic": "Artistic-1.0-Perl",
    "bsd-2-clause": "BSD-2-Clause",
    "bsd-3-clause": "BSD-3-Clause",
    "bsd-4-clause": "BSD-4-Clause",
    "zlib": "Zlib",
    "isc": "ISC",
    "mit": "MIT",
    "apache-2": "Apache-2.0",
    "apache-2.0": "Apache-2.0",
    "mpl-1.1": "MPL-1.1",
    "mpl-2.0": "MPL-2.0",
    "cc0": "CC0-1.0",
    "cc0-1.0": "CC0-1.0",
    "psf-2": "PSF-2.0",
    "python": "PSF-2.0",
    "openssl": "OpenSSL",
    "ssleay": "SSLeay",
    "curl": "curl",
    "x11": "X11",
    "bsl-1.0": "BSL-1.0",
    "unicode-dfs-2016": "Unicode-DFS-2016",
    "0bsd": "0BSD",
    "wtfpl": "WTFPL",
    "ftl": "FTL",
    "bzip2-1.0.6": "bzip2-1.0.6",
    "artistic-2.0": "Artistic-2.0",
    "fsfullr": "FSFULLR",
    "fsful": "FSFUL",
    "fsfap": "FSFAP",
    "beerware": "Beerware",
    "unlicense": "Unlicense",
    "bsd-1-clause": "BSD-1-Clause",
    "ofl-1.1": "OFL-1.1",
    "lppl-1.3c": "LPPL-1.3c",
    "cc-by-4.0": "CC-BY-4.0",
    "cc-by-sa-4.0": "CC-BY-SA-4.0",
}
_FAMILY = re.compile(r"^(A?GPL|LGPL|GFDL)-(\d(?:\.\d)?)(\+?)$", re.IGNORECASE)


def _spdx_id(debian_name: str) -> str:
    family = _FAMILY.match(debian_name)
    if family:
        kind, number, plus = family.groups()
        number = number if "." in number else f"{number}.0"
        return f"{kind.upper()}-{number}-{'or-later' if plus else 'only'}"
    known = _DEBIAN_TO_SPDX.get(debian_name.lower())
    if known:
        return known
    return _license_ref(debian_name)


def _license_ref(name: str) -> str:
    name = name.replace("+", "-plus")
    return "LicenseRef-" + (re.sub(r"[^A-Za-z0-9.-]+", "-", name).strip("-") or "unknown")


# Exceptions Debian names in words ("GPL-3+ with Bison exception") that SPDX lists.
_EXCEPTIONS = {
    "bison": "Bison-exception-2.2",
    "libtool": "Libtool-exception",
    "linux-syscall-note": "Linux-syscall-note",
    "gcc": "GCC-exception-3.1",
    "font": "Font-exception-2.0",
    "classpath": "Classpath-exception-2.0",
}


def _with_exception(license_name: str, words: list[str]) -> str:
    """``GPL-2+ with OpenSSL exception``: SPDX's WITH takes only listed exception ids, so
    an exception SPDX does not list makes the whole phrase one LicenseRef."""
    base = _spdx_id(license_name)
    key = words[0].lower() if words else ""
    known = _EXCEPTIONS.get(key)
    if known and not base.startswith("LicenseRef-"):
        return f"{base} WITH {known}"
    return _license_ref("-".join([license_name, "with", *words]))


def _convert_piece(text: str) -> str:
    """One comma-free DEP-5 license expression to SPDX syntax."""
    tokens = re.findall(r"\(|\)|[^\s()]+", text)
    out: list[str] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        word = token.lower()
        if word in ("and", "or"):
            out.append(word.upper())
        elif token in ("(", ")"):
            out.append(token)
        elif i + 1 < len(tokens) and tokens[i + 1].lower() == "with":
            j = i + 2
            while j < len(tokens) and tokens[j].lower() not in ("and", "or", "(", ")"):
                j += 1
            out.append(_with_exception(token, tokens[i + 2 : j]))
            i = j
            continue
        else:
            out.append(_spdx_id(token))
        i += 1
    return " ".join(out).replace("( ", "(").replace(" )", ")")


def convert_expression(debian: str) -> str:
    """A DEP-5 ``License:`` synopsis as an SPDX license expression.

    DEP-5 lets a comma group with lower precedence ("A or B, and C" is "(A OR B) AND C").
    """
    pieces = [p.strip() for p in debian.split(",") if p.strip()]
    result = ""
    for piece in pieces:
        joiner = "AND"
        first, _, rest = piece.partition(" ")
        if first.lower() in ("and", "or") and rest:
            joiner, piece = first.upper(), rest.strip()
        converted = _convert_piece(piece)
        if not converted:
            continue
        result = f"{_group(result)} {joiner} {_group(converted)}" if result else converted
    return result or NOASSERTION


def _group(expression: str) -> str:
    return f"({expression})" if " " in expression else expression


def _paragraphs(text: str) -> list[dict[str, str]]:
    """DEP-5 paragraphs as {field (lowercase): first line of its value}."""
    result: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if current:
                result.append(current)
                current = {}
            continue
        if line[0] in " \t" or ":" not in line:
            continue
        field, _, value = line.partition(":")
        current.setdefault(field.strip().lower(), value.strip())
    if current:
        result.append(current)
    return result


def license_of(copyright_text: str) -> str:
    """The declared license of a package from its Debian copyright file: the licenses of
    the DEP-5 "Files:" paragraphs (and the header's), joined with AND; NOASSERTION when
    the file is not machine-readable."""
    paragraphs = _paragraphs(copyright_text)
    if not paragraphs or "format" not in paragraphs[0]:
        return NOASSERTION
    found: list[str] = []
    for number, paragraph in enumerate(paragraphs):
        synopsis = paragraph.get("license", "")
        files = paragraph.get("files")
        if not synopsis or (number > 0 and files is None):
            # A paragraph without "Files:" only spells out a license's text.
            continue
        if files is not None and all(f.startswith("debian/") for f in files.split()):
            # The packaging scripts are not shipped in the binary package.
            continue
        expression = convert_expression(synopsis)
        # "A and B" in one paragraph adds two terms, not a new group repeating A.
        terms = (
            expression.split(" AND ")
            if "(" not in expression and " OR " not in expression
            else [expression]
        )
        for term in terms:
            if term != NOASSERTION and term not in found:
                found.append(term)
    if not found:
        return NOASSERTION
    if len(found) == 1:
        return found[0]
    return " AND ".join(_group(e) for e in found)


def package_license(root: Path, package: str) -> str:
    """The license of Debian package ``package`` as unpacked under ``root``."""
    hit = resolve_file(root, f"/usr/share/doc/{package}/copyright")
    if hit is None:
        return NOASSERTION
    try:
        text = hit.host_path(root).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return NOASSERTION
    return license_of(text)


# --- SPDX -----------------------------------------------------------------------------


def _ref(kind: str, index: int, name: str) -> str:
    return f"SPDXRef-{kind}-{index}-{re.sub(r'[^A-Za-z0-9.-]+', '-', name).strip('-')}"


def _package(
    spdx_id: str, name: str, version: str, license: str, extra: dict[str, Any]
) -> dict[str, Any]:
    return {
        "SPDXID": spdx_id,
        "name": name,
        "versionInfo": version,
        "downloadLocation": NOASSERTION,
        "filesAnalyzed": False,
        "licenseConcluded": NOASSERTION,
        "licenseDeclared": license,
        "copyrightText": NOASSERTION,
        **extra,
    }


def spdx_document(report: ImageReport, epoch: int) -> dict[str, Any]:
    """The report as an SPDX 2.3 JSON document (a dict ready for json.dumps)."""
    image_id = "SPDXRef-Image"
    packages = [
        _package(
            image_id,
            f"{report.app}-image-{report.board}",
            report.version,
            NOASSERTION,
            {"primaryPackagePurpose": "OPERATING-SYSTEM", "supplier": NOASSERTION},
        ),
        _package(
            "SPDXRef-App",
            report.app,
            report.version,
            NOASSERTION,
            {"primaryPackagePurpose": "APPLICATION"},
        ),
        _package(
            "SPDXRef-Fleet",
            "fleet",
            __version__,
            NOASSERTION,
            {"comment": "Files fleet generates or ships (init, agent, configuration)."},
        ),
    ]
    ids = {APP_ORIGIN: "SPDXRef-App", FLEET_ORIGIN: "SPDXRef-Fleet"}
    for index, package in enumerate(sorted(report.packages, key=lambda p: p.name)):
        ids[package.name] = _ref("Package", index, package.name)
        purl = (
            f"pkg:deb/debian/{quote(package.name, safe='')}@{quote(package.version, safe='')}"
            f"?arch={quote(package.architecture, safe='')}"
        )
        packages.append(
            _package(
                ids[package.name],
                package.name,
                package.version,
                package.license,
                {
                    "supplier": "Organization: Debian",
                    "externalRefs": [
                        {
                            "referenceCategory": "PACKAGE-MANAGER",
                            "referenceType": "purl",
                            "referenceLocator": purl,
                        }
                    ],
                },
            )
        )
    relationships = [
        {
            "spdxElementId": "SPDXRef-DOCUMENT",
            "relationshipType": "DESCRIBES",
            "relatedSpdxElement": image_id,
        }
    ]
    relationships += [
        {
            "spdxElementId": image_id,
            "relationshipType": "CONTAINS",
            "relatedSpdxElement": p["SPDXID"],
        }
        for p in packages[1:]
    ]
    files = []
    contained: dict[str, list[str]] = {}
    for index, entry in enumerate(sorted(report.files, key=lambda f: f.path)):
        file_id = _ref("File", index, entry.path.rsplit("/", 1)[-1])
        files.append(
            {
                "SPDXID": file_id,
                "fileName": "." + entry.path,
                "checksums": [
                    {"algorithm": "SHA1", "checksumValue": entry.sha1},
                    {"algorithm": "SHA256", "checksumValue": entry.sha256},
                ],
                "licenseConcluded": NOASSERTION,
                "copyrightText": NOASSERTION,
            }
        )
        owner = ids.get(entry.origin, image_id)
        contained.setdefault(owner, []).append(entry.sha1)
        relationships.append(
            {"spdxElementId": owner, "relationshipType": "CONTAINS", "relatedSpdxElement": file_id}
        )
    # SPDX lets only an analyzed package contain files, and an analyzed package carries
    # the verification code of its files (SPDX 2.3 section 7.9).
    for element in packages:
        sha1s = contained.get(element["SPDXID"])
        if sha1s:
            element["filesAnalyzed"] = True
            element["packageVerificationCode"] = {
                "packageVerificationCodeValue": hashlib.sha1(
                    "".join(sorted(sha1s)).encode(), usedforsecurity=False
                ).hexdigest()
            }
    document: dict[str, Any] = {
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": f"{report.app}-{report.version}-{report.board}",
        "creationInfo": {
            "created": datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "creators": [f"Tool: fleet-{__version__}"],
        },
        "packages": packages,
        "files": files,
        "relationships": relationships,
    }
    refs = sorted(
        {r for p in report.packages for r in re.findall(r"LicenseRef-[A-Za-z0-9.-]+", p.license)}
    )
    if refs:
        document["hasExtractedLicensingInfos"] = [
            {
                "licenseId": ref,
                "name": ref.removeprefix("LicenseRef-"),
                "extractedText": (
                    f"The license Debian names '{ref.removeprefix('LicenseRef-')}'; its text is "
                    "in the package's /usr/share/doc/PACKAGE/copyright file."
                ),
            }
            for ref in refs
        ]
    # The namespace must be unique per document; deriving it from the content keeps
    # the document reproducible while two different images never share one.
    digest = hashlib.sha256(_dump(document).encode()).hexdigest()
    document["documentNamespace"] = (
        f"https://spdx.org/spdxdocs/fleet/{quote(document['name'], safe='')}-{digest}"
    )
    return document


def _dump(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


# --- human summary --------------------------------------------------------------------


def human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def summary_text(report: ImageReport) -> str:
    lines = [f"fleet image report: {report.app} {report.version} for board {report.board}", ""]
    lines.append("Payloads")
    for payload in report.payloads:
        lines.append(f"  {payload.name:<28} {human(payload.size):>10}  {payload.size:>12,} bytes")
    if report.payloads:
        total = sum(p.size for p in report.payloads if p.counted)
        lines.append(f"  {'total (release payloads)':<28} {human(total):>10}  {total:>12,} bytes")
    files_total = sum(f.size for f in report.files)
    lines += [
        "",
        f"Contents: {len(report.files)} files, {human(files_total)} uncompressed, "
        f"from {len(report.packages)} Debian packages, the app and fleet",
        "",
        "Packages by size in the image",
    ]
    by_origin: dict[str, list[FileEntry]] = {}
    for entry in report.files:
        by_origin.setdefault(entry.origin, []).append(entry)
    rows = [(p.name, p.version, p.architecture, p.license) for p in report.packages]
    rows += [(APP_ORIGIN, report.version, "-", "-"), (FLEET_ORIGIN, __version__, "-", "-")]
    sized = sorted(rows, key=lambda r: (-sum(f.size for f in by_origin.get(r[0], [])), r[0]))
    for name, version, arch, license in sized[:TOP]:
        files = by_origin.get(name, [])
        size = sum(f.size for f in files)
        lines.append(
            f"  {human(size):>10}  {len(files):>5} files  {name} {version} {arch}  [{license}]"
        )
    if len(sized) > TOP:
        lines.append(f"  ... and {len(sized) - TOP} more packages (see {SBOM_NAME})")
    lines += ["", "Largest files"]
    for entry in sorted(report.files, key=lambda f: (-f.size, f.path))[:TOP]:
        lines.append(f"  {human(entry.size):>10}  {entry.path}  ({entry.origin})")
    return "\n".join(lines) + "\n"


def write_report(report: ImageReport, out_dir: Path, epoch: int) -> tuple[Path, Path]:
    """Write ``sbom.spdx.json`` and ``report.txt`` into ``out_dir``; returns both paths."""
    sbom = out_dir / SBOM_NAME
    summary = out_dir / SUMMARY_NAME
    write_text(sbom, _dump(spdx_document(report, epoch)))
    write_text(summary, summary_text(report))
    return sbom, summary


def packages_from(root: Path, installed: Iterable[tuple[str, str, str]]) -> list[PackageEntry]:
    """PackageEntry for each (name, version, architecture), licenses read under ``root``."""
    return [
        PackageEntry(name, version, arch, package_license(root, name))
        for name, version, arch in installed
    ]
