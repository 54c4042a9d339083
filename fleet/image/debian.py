"""Debian packages as build inputs: resolve, pin, cache, extract.

The first build resolves the wanted packages and their dependencies with mmdebstrap
(``--variant=extract``, so nothing runs for the foreign architecture) and pins the exact
versions and SHA-256 of every .deb in ``fleet.lock``. Every later build takes the pinned
.debs from the download cache, checks their hashes and extracts them itself: no network
once cached, and the same inputs give the same bytes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from fleet import atomic
from fleet.errors import BuildError, ConfigError
from fleet.hashing import sha256_file
from fleet.run import run

LOCK_FORMAT = 1
SUITE = "bookworm"
# non-free-firmware holds the Raspberry Pi GPU firmware (raspi-firmware).
_DEFAULT_SOURCES = (
    "deb http://deb.debian.org/debian bookworm main non-free-firmware",
    "deb http://deb.debian.org/debian bookworm-updates main non-free-firmware",
    "deb http://deb.debian.org/debian-security bookworm-security main non-free-firmware",
)
_NAME = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
_VERSION = re.compile(r"^[A-Za-z0-9.+~:-]+$")


@dataclass(frozen=True)
class Deb:
    name: str
    version: str
    arch: str
    sha256: str
    filename: str

    def key(self) -> str:
        return f"{self.name}:{self.arch}"


def cache_dir() -> Path:
    base = os.environ.get("FLEET_CACHE") or os.environ.get("XDG_CACHE_HOME")
    root = Path(base) if base else Path.home() / ".cache"
    return (root if os.environ.get("FLEET_CACHE") else root / "fleet").resolve()


def _sources() -> list[str]:
    custom = os.environ.get("FLEET_DEBIAN_SOURCES")
    return [s.strip() for s in custom.split("|")] if custom else list(_DEFAULT_SOURCES)


def _deb_fields(path: Path) -> tuple[str, str, str]:
    proc = run(["dpkg-deb", "-f", path, "Package", "Version", "Architecture"])
    fields = dict(line.split(": ", 1) for line in proc.stdout.decode().splitlines() if ": " in line)
    try:
        return fields["Package"], fields["Version"], fields["Architecture"]
    except KeyError as exc:
        raise BuildError(f"{path.name}: not a Debian package (no {exc.args[0]} field)") from exc


def read_lock(path: Path) -> dict[str, Deb]:
    """Pinned packages by ``name:arch``; an empty dict when there is no lock yet."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
        if data.get("format") != LOCK_FORMAT:
            raise ConfigError(f"{path}: unsupported lock format {data.get('format')!r}")
        debs = [Deb(**entry) for entry in data["packages"]]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: malformed lock file ({exc}); delete it to re-resolve") from exc
    for deb in debs:
        if not _NAME.match(deb.name) or not _VERSION.match(deb.version) or "/" in deb.filename:
            raise ConfigError(f"{path}: bad entry for package {deb.name!r}")
    return {deb.key(): deb for deb in debs}


def write_lock(path: Path, debs: dict[str, Deb], wanted: dict[str, list[str]]) -> None:
    data = {
        "format": LOCK_FORMAT,
        "comment": "Written by fleet build: exact Debian inputs. Delete to re-resolve.",
        "wanted": {arch: sorted(names) for arch, names in sorted(wanted.items())},
        "packages": [deb.__dict__ for _, deb in sorted(debs.items())],
    }
    atomic.write_text(path, json.dumps(data, indent=1, sort_keys=True) + "\n")


def wanted_in_lock(path: Path) -> dict[str, list[str]]:
    if not path.exists():
        return {}
    try:
        wanted = json.loads(path.read_text()).get("wanted", {})
    except json.JSONDecodeError:
        return {}
    return {str(k): [str(n) for n in v] for k, v in wanted.items()}


def resolve(names: list[str], arch: str) -> dict[str, Deb]:
    """Download ``names`` for ``arch`` with their dependencies into the cache; pin them."""
    for name in names:
        if not _NAME.match(name):
            raise ConfigError(f"not a Debian package name: {name!r}")
    debs_dir = cache_dir() / "debs"
    debs_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fleet-resolve-") as tmp:
        target = _download(names, arch, Path(tmp))
        found: dict[str, Deb] = {}
        for deb_path in sorted(target.glob("*.deb")):
            name, version, deb_arch = _deb_fields(deb_path)
            sha = sha256_file(deb_path)
            filename = f"{name}_{version.replace(':', '%3a')}_{deb_arch}.deb"
            cached = debs_dir / filename
            _cache(deb_path, cached)
            found[f"{name}:{deb_arch}"] = Deb(name, version, deb_arch, sha, filename)
    missing = [n for n in names if f"{n}:{arch}" not in found and f"{n}:all" not in found]
    if missing:
        raise BuildError(f"Debian packages not found for {arch}: {', '.join(missing)}")
    return found


def ensure_cached(debs: dict[str, Deb], arch: str) -> None:
    """Make sure every pinned .deb is in the cache with its pinned hash."""
    debs_dir = cache_dir() / "debs"
    missing = [d for d in debs.values() if not (debs_dir / d.filename).exists()]
    if missing:
        pins = [f"{d.name}={d.version}" for d in missing if d.arch in (arch, "all")]
        resolve_pinned(pins, arch)
    for deb in debs.values():
        path = debs_dir / deb.filename
        if not path.exists():
            raise BuildError(f"{deb.name} {deb.version} is pinned in fleet.lock but not available")
        if sha256_file(path) != deb.sha256:
            raise BuildError(
                f"{deb.filename}: SHA-256 differs from fleet.lock (cache corrupted or the "
                "archive changed the package); delete it from the cache to fetch it again"
            )


def resolve_pinned(pins: list[str], arch: str) -> None:
    """Fetch exact ``name=version`` pins into the cache (used when the cache lost them)."""
    debs_dir = cache_dir() / "debs"
    with tempfile.TemporaryDirectory(prefix="fleet-fetch-") as tmp:
        for deb_path in sorted(_download(pins, arch, Path(tmp)).glob("*.deb")):
            name, version, deb_arch = _deb_fields(deb_path)
            _cache(deb_path, debs_dir / f"{name}_{version.replace(':', '%3a')}_{deb_arch}.deb")


def _cache(source: Path, cached: Path) -> None:
    # Copy then rename: a cut copy never sits in the cache under a package's name.
    if cached.exists():
        return
    partial = cached.with_name(f".{cached.name}.part")
    shutil.copyfile(source, partial)
    os.replace(partial, cached)


def _download(includes: list[str], arch: str, scratch: Path) -> Path:
    """Let mmdebstrap resolve and download ``includes`` for ``arch``; return the folder
    holding the .debs. ``extract`` runs nothing of the foreign architecture."""
    target = scratch / "root"
    run(
        [
            "mmdebstrap",
            "--variant=extract",
            f"--architectures={arch}",
            "--skip=download/empty",
            "--skip=cleanup/apt/cache",
            "--quiet",
            f"--include={','.join(sorted(includes))}",
            SUITE,
            target,
            *_sources(),
        ],
        timeout=900,
    )
    return target / "var/cache/apt/archives"


def extract(deb: Deb) -> Path:
    """The package's files, extracted once into the cache (read-only use)."""
    root = cache_dir() / "extract" / deb.sha256
    if (root / ".complete").exists():
        return root
    tmp = Path(tempfile.mkdtemp(prefix=".x-", dir=root.parent if root.parent.exists() else None))
    try:
        data = run(["dpkg-deb", "--fsys-tarfile", cache_dir() / "debs" / deb.filename]).stdout
        with tempfile.TemporaryFile() as buf:
            buf.write(data)
            buf.seek(0)
            with tarfile.open(fileobj=buf) as tar:
                tar.extractall(tmp, filter=_package_filter)  # noqa: S202 (filtered)
        (tmp / ".complete").touch()
        root.parent.mkdir(parents=True, exist_ok=True)
        if root.exists():
            shutil.rmtree(root)
        os.replace(tmp, root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return root


def _package_filter(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
    """tarfile's "tar" filter (no absolute or escaping paths, no setuid bits) and no
    device nodes. Absolute symlink targets stay: they point into the image, and fleet
    never follows them on the host."""
    if member.ischr() or member.isblk() or member.isfifo():
        raise BuildError(f"package holds a device file {member.name}; refusing it")
    return tarfile.tar_filter(member, dest)


def package_files(deb: Deb) -> list[str]:
    """Paths (relative, no leading slash) of the regular files and links a package ships."""
    root = extract(deb)
    files = []
    for path in sorted(root.rglob("*")):
        if path.name == ".complete" and path.parent == root:
            continue
        if path.is_file() or path.is_symlink():
            files.append(str(path.relative_to(root)))
    return files


def lock_packages(lock_path: Path, arch: str, names: list[str]) -> dict[str, Deb]:
    """The pinned package set for ``names``: from fleet.lock, or resolved and written to it."""
    locked = read_lock(lock_path)
    wanted = wanted_in_lock(lock_path)
    if locked and sorted(wanted.get(arch, [])) == sorted(names):
        ensure_cached(locked, arch)
        return {k: d for k, d in locked.items() if d.arch in (arch, "all")}
    fresh = resolve(names, arch)
    merged = {k: d for k, d in locked.items() if d.arch not in (arch, "all")}
    merged.update(fresh)
    wanted[arch] = names
    write_lock(lock_path, merged, wanted)
    return fresh
