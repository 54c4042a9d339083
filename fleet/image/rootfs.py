"""Assembles "just enough OS" in a staging folder: busybox, dropbear, the verifier, the
libraries they need (and nothing else from their packages), the kernel modules the
board needs, fleet's init and agent files, and the app."""

from __future__ import annotations

import os
import shlex
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

from fleet import data_dir
from fleet.boards import BoardProfile
from fleet.errors import BuildError
from fleet.image import wireless
from fleet.image.elf import needed_closure
from fleet.image.kernel import KernelTree
from fleet.project import Project
from signing.errors import SigningError
from signing.keys import parse_public

DEVICE_DIR = data_dir("device")

# Programs the system uses, taken from their packages with their libraries.
BASE_PROGRAMS = {
    "busybox-static": ["bin/busybox"],
    "dropbear-bin": ["usr/sbin/dropbear", "usr/bin/dropbearkey"],
    "signify-openbsd": ["bin/signify-openbsd"],
}
BASE_PACKAGES = tuple(BASE_PROGRAMS)
# Pull mode over https (docs/pull.md): Debian's busybox wget runs `openssl s_client
# -verify_return_error -verify_hostname HOST` when an openssl program is there, and falls
# back to its own TLS, which checks no certificate (and which OpenSSL 3 servers refuse:
# its hello offers no signature algorithms), only when there is none.
TLS_PACKAGES = ["openssl", "ca-certificates"]
# openssl's default CA file (OPENSSLDIR/cert.pem): one bundle, no hashed folder to keep.
CA_BUNDLE = "usr/lib/ssl/cert.pem"
PROGRAM_FOLDERS = ("bin/", "sbin/", "usr/bin/", "usr/sbin/")
# The app and its health check run as this user (fleet-tool as-user), never as root.
APP_UID = 1000

# The busybox applets fleet's scripts and a person at the console use. A read-only
# root cannot run `busybox --install` at boot, so the links are made here.
APPLETS = [
    "sh",
    "ash",
    "cat",
    "chmod",
    "chown",
    "cp",
    "cut",
    "date",
    "dd",
    "df",
    "dmesg",
    "du",
    "echo",
    "env",
    "false",
    "find",
    "free",
    "grep",
    "gunzip",
    "gzip",
    "head",
    "hexdump",
    "hostname",
    "ifconfig",
    "init",
    "insmod",
    "kill",
    "killall",
    "less",
    "ln",
    "logger",
    "ls",
    "lsmod",
    "md5sum",
    "mkdir",
    "mke2fs",
    "mknod",
    "mktemp",
    "modprobe",
    "more",
    "mount",
    "mv",
    "nc",
    "od",
    "passwd",
    "pidof",
    "ping",
    "poweroff",
    "printf",
    "ps",
    "pwd",
    "readlink",
    "renice",
    "reboot",
    "rm",
    "rmdir",
    "route",
    "sed",
    "seq",
    "setsid",
    "sha256sum",
    "sleep",
    "sort",
    "stat",
    "sync",
    "tail",
    "tar",
    "tee",
    "test",
    "timeout",
    "top",
    "touch",
    "tr",
    "true",
    "tty",
    "udhcpc",
    "udhcpd",
    "umount",
    "uname",
    "uptime",
    "vi",
    "watchdog",
    "wc",
    "wget",
    "which",
    "xargs",
    "yes",
    "awk",
    "basename",
    "cmp",
    "dirname",
    "expr",
    "halt",
    "ip",
    "sha512sum",
    "realpath",
    "base64",
    "[",
    "[[",
]
SBIN_APPLETS = {
    "init",
    "insmod",
    "lsmod",
    "modprobe",
    "mke2fs",
    "ifconfig",
    "route",
    "reboot",
    "poweroff",
    "halt",
    "udhcpc",
    "udhcpd",
    "watchdog",
}


@dataclass(frozen=True)
class BoardTrust:
    """What the board trusts: signify public keys by key id, revoked ids, threshold."""

    keys: dict[str, bytes]
    revoked: frozenset[str] = frozenset()
    threshold: int = 1


@dataclass
class Staged:
    """What went into the staging folder, and where each file came from."""

    root: Path
    origin: dict[str, str] = field(default_factory=dict)  # image path -> package/app/fleet

    def add_file(self, rel: str, source: Path, origin: str, mode: int | None = None) -> None:
        target = self.root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        os.chmod(target, mode if mode is not None else stat.S_IMODE(source.stat().st_mode))
        self.origin[rel] = origin

    def add_bytes(self, rel: str, data: bytes, origin: str, mode: int = 0o644) -> None:
        target = self.root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        os.chmod(target, mode)
        self.origin[rel] = origin

    def add_link(self, rel: str, target: str, origin: str) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink() or path.exists():
            path.unlink()
        os.symlink(target, path)
        self.origin[rel] = origin

    def add_dir(self, rel: str, mode: int = 0o755) -> None:
        path = self.root / rel
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, mode)


def shell_env(values: dict[str, str]) -> bytes:
    lines = [f"{key}={shlex.quote(value)}" for key, value in values.items()]
    return ("\n".join(lines) + "\n").encode()


def assemble(
    staging: Path,
    profile: BoardProfile,
    project: Project,
    app_binary: Path,
    packages: dict[str, Path],
    kernel: KernelTree,
    modules: list[Path],
    release_number: int,
    trust: BoardTrust,
    kernel_package: str,
    development: bool = False,
) -> Staged:
    """Fill ``staging`` with the root filesystem. ``packages`` maps a package name to its
    extracted files; ``modules`` are the system's kernel modules, dependencies first.
    A ``development`` image also lets the shell keys of partition 1 in (fleet lab ssh);
    a production one carries no way to a shell."""
    if staging.exists():
        shutil.rmtree(staging)
    staged = Staged(staging)
    for rel in (
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "lib",
        "etc/fleet/keys",
        "proc",
        "sys",
        "dev",
        "run",
        "tmp",
        "data",
        "boot/firmware",
        "app/bin",
    ):
        staged.add_dir(rel)
    staged.add_link("root", "/run/root", "fleet")
    staged.add_link("var", "/run/var", "fleet")
    staged.add_link("etc/resolv.conf", "/run/resolv.conf", "fleet")
    staged.add_link("etc/mtab", "/proc/mounts", "fleet")

    programs: list[str] = []
    for package, files in BASE_PROGRAMS.items():
        root = _package_root(packages, package)
        for rel in files:
            staged.add_file(rel, root / rel, package)
            programs.append(rel)
    _check_applets(_package_root(packages, "busybox-static") / "bin/busybox")
    for applet in APPLETS:
        folder = "sbin" if applet in SBIN_APPLETS else "bin"
        if not (staging / folder / applet).exists():
            staged.add_link(f"{folder}/{applet}", "/bin/busybox", "busybox-static")

    for package in project.packages:
        programs += _add_whole_package(staged, package, _package_root(packages, package))
    programs += wireless.stage(staged, profile, project, packages)
    programs += _add_tls(staged, project, packages)

    app_rel = f"app/bin/{project.build.output}"
    staged.add_file(app_rel, app_binary, "app", 0o755)
    programs.append(app_rel)
    _add_libraries(staged, packages, programs)

    module_lines = []
    for module in modules:
        rel = f"lib/modules/{kernel.version}/{module.relative_to(kernel.modules_root)}"
        staged.add_file(rel, module, kernel_package, 0o644)
        module_lines.append(f"{kernel.version}/{module.relative_to(kernel.modules_root)}")
    staged.add_bytes("etc/fleet/modules", ("\n".join(module_lines) + "\n").encode(), "fleet")

    _add_system_files(staged, profile, project, release_number, development)
    # The board's own trust, pinned in its read-only root: it verifies every release
    # itself, whatever the host did or did not check.
    for keyid, pub in sorted(trust.keys.items()):
        staged.add_bytes(f"etc/fleet/keys/{keyid}.pub", pub, "fleet")
    revoked = "".join(f"{keyid}\n" for keyid in sorted(trust.revoked))
    staged.add_bytes("etc/fleet/revoked", revoked.encode(), "fleet")
    staged.add_bytes("etc/fleet/threshold", f"{trust.threshold}\n".encode(), "fleet")
    staged.add_file("etc/fleet/verify-release", DEVICE_DIR / "verify-release.sh", "fleet", 0o755)
    _add_pull(staged, project)
    return staged


def _add_tls(staged: Staged, project: Project, packages: dict[str, Path]) -> list[str]:
    """openssl, its configuration and one CA bundle (Debian's Mozilla set, which its
    update-ca-certificates would make at install time, plus [pull] ca_file)."""
    pull = project.pull
    if pull is None or not pull.https:
        return []
    openssl = _package_root(packages, "openssl")
    staged.add_file("usr/bin/openssl", openssl / "usr/bin/openssl", "openssl", 0o755)
    staged.add_file("usr/lib/ssl/openssl.cnf", openssl / "etc/ssl/openssl.cnf", "openssl", 0o644)
    certs = sorted(
        (_package_root(packages, "ca-certificates") / "usr/share/ca-certificates").rglob("*.crt")
    )
    if not certs:
        raise BuildError("ca-certificates holds no certificates")
    bundle = b"".join(c.read_bytes().rstrip(b"\n") + b"\n" for c in certs)
    if pull.ca_file is not None:
        try:
            extra = pull.ca_file.read_bytes()
        except OSError as exc:
            raise BuildError(f"[pull] ca_file: {pull.ca_file}: {exc.strerror}") from exc
        try:
            x509.load_pem_x509_certificates(extra)
        except ValueError as exc:
            raise BuildError(f"[pull] ca_file: {pull.ca_file}: not PEM certificates") from exc
        bundle += extra.rstrip(b"\n") + b"\n"
    staged.add_bytes(CA_BUNDLE, bundle, "ca-certificates")
    return ["usr/bin/openssl"]


def _add_pull(staged: Staged, project: Project) -> None:
    """Pull mode (docs/pull.md): the script, always (a URL may come with provisioning),
    and [pull]'s settings and pinned timestamp keys when fleet.toml has them."""
    staged.add_file("etc/fleet/pull", DEVICE_DIR / "pull", "fleet", 0o755)
    pull = project.pull
    if pull is None:
        return
    for path in pull.timestamp_keys:
        try:
            key = parse_public(path.read_bytes(), str(path))
        except OSError as exc:
            raise BuildError(f"[pull] timestamp_keys: {path}: {exc.strerror}") from exc
        except SigningError as exc:
            raise BuildError(f"[pull] timestamp_keys: {exc}") from exc
        staged.add_bytes(f"etc/fleet/pull-keys/{key.key_id}.pub", key.to_bytes(), "fleet")
    settings = {
        "PULL_URL": pull.url or "",
        "PULL_GROUP": pull.group,
        "PULL_INTERVAL": str(pull.interval_s),
        "PULL_JITTER": str(pull.jitter_s),
    }
    staged.add_bytes("etc/fleet/pull.env", shell_env(settings), "fleet")


def _check_applets(busybox: Path) -> None:
    # busybox keeps its applet names as one NUL-separated table; a link to an applet it
    # lacks would fail only on the board, at the worst moment.
    table = busybox.read_bytes()
    missing = [a for a in APPLETS if b"\0" + a.encode() + b"\0" not in table]
    if missing:
        raise BuildError(f"{busybox.name} has no applet {', '.join(missing)} (fleet needs it)")


def _package_root(packages: dict[str, Path], name: str) -> Path:
    if name not in packages:
        raise BuildError(f"Debian package {name} is not among the build's packages")
    return packages[name]


def _add_whole_package(staged: Staged, package: str, root: Path) -> list[str]:
    """Add a package's files; returns its programs and shared libraries, whose own
    libraries the image needs too (libsqlite3 needs libm, which no program of a hello
    image pulls in)."""
    found: list[str] = []
    skip = (
        "usr/share/doc",
        "usr/share/man",
        "usr/share/info",
        "usr/share/locale",
        "usr/share/lintian",
    )
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if rel == ".complete" or rel.startswith(skip) or path.is_dir():
            continue
        if path.is_symlink():
            staged.add_link(rel, os.readlink(path), package)
        else:
            staged.add_file(rel, path, package)
            program = rel.startswith(PROGRAM_FOLDERS) and path.stat().st_mode & 0o111
            if program or (".so" in path.name and _is_elf(path)):
                found.append(rel)
    return found


def _is_elf(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(4) == b"\x7fELF"


def _add_libraries(staged: Staged, packages: dict[str, Path], programs: list[str]) -> None:
    """Copy the shared libraries ``programs`` need, transitively, from the packages."""
    sysroot = staged.root.parent / "sysroot"
    owner = _merge_sysroot(sysroot, packages)
    for rel in programs:
        target = sysroot / rel
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(staged.root / rel, target)
            os.chmod(target, 0o755)  # noqa: S103 (a program in the image's scratch sysroot)
    for path in sorted(needed_closure(sysroot, [sysroot / rel for rel in programs])):
        rel = str(path).lstrip("/")
        if rel in staged.origin:
            continue
        _copy_with_links(staged, sysroot, rel, owner)


def _merge_sysroot(sysroot: Path, packages: dict[str, Path]) -> dict[str, str]:
    """One folder with every package's files (hard links), to resolve libraries in."""
    if sysroot.exists():
        shutil.rmtree(sysroot)
    owner: dict[str, str] = {}
    for name, root in sorted(packages.items()):
        if (root / "boot").is_dir() and any((root / "boot").glob("vmlinuz-*")):
            continue  # the kernel package: thousands of modules, no libraries
        for path in sorted(root.rglob("*")):
            rel = str(path.relative_to(root))
            if rel == ".complete" or rel.startswith("usr/share"):
                continue
            target = sysroot / rel
            if path.is_dir() and not path.is_symlink():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists() or target.is_symlink():
                continue
            if path.is_symlink():
                os.symlink(os.readlink(path), target)
            else:
                try:
                    os.link(path, target)
                except OSError:
                    shutil.copy2(path, target)
            owner[rel] = name
    return owner


def _copy_with_links(staged: Staged, sysroot: Path, rel: str, owner: dict[str, str]) -> None:
    """Copy ``rel`` from the sysroot, recreating each symlink on its way (ld.so paths)."""
    seen = 0
    while seen < 16:
        seen += 1
        source = sysroot / rel
        if source.is_symlink():
            link = os.readlink(source)
            staged.add_link(rel, link, owner.get(rel, "unknown"))
            rel = os.path.normpath(
                link.lstrip("/") if link.startswith("/") else str(Path(rel).parent / link)
            )
            continue
        if rel not in staged.origin:
            staged.add_file(rel, source, owner.get(rel, "unknown"))
        return
    raise BuildError(f"{rel}: too many levels of symbolic links")


def _add_system_files(
    staged: Staged,
    profile: BoardProfile,
    project: Project,
    release_number: int,
    development: bool,
) -> None:
    for name in (
        "rc.sysinit",
        "rc.shutdown",
        "run-sshd",
        "run-app",
        "health-watch",
        "net-up",
        "udhcpc.script",
        "agent",
        "agent-ssh",
    ):
        staged.add_file(f"etc/fleet/{name}", DEVICE_DIR / name, "fleet", 0o755)
    wifi = wireless.wifi_for(profile, project)
    if wifi is not None:
        staged.add_file("etc/fleet/wifi-up", DEVICE_DIR / "wifi-up", "fleet", 0o755)
    if profile.gadget is not None:
        staged.add_file("etc/fleet/gadget-up", DEVICE_DIR / "gadget-up", "fleet", 0o755)
    staged.add_file("etc/inittab", DEVICE_DIR / "inittab", "fleet", 0o644)
    staged.add_file("etc/fstab", DEVICE_DIR / "fstab", "fleet", 0o644)
    staged.add_link("sbin/init", "/bin/busybox", "busybox-static")
    app_user = f"app:x:{APP_UID}:{APP_UID}:the app:/data/app:/bin/false\n"
    staged.add_bytes("etc/passwd", f"root:x:0:0:root:/root:/bin/sh\n{app_user}".encode(), "fleet")
    staged.add_bytes("etc/group", f"root:x:0:\ntty:x:5:\napp:x:{APP_UID}:\n".encode(), "fleet")
    staged.add_bytes(
        "etc/shadow", b"root:*:19000:0:99999:7:::\napp:*:19000:0:99999:7:::\n", "fleet", 0o600
    )
    staged.add_bytes("etc/shells", b"/bin/sh\n", "fleet")
    storage = profile.storage
    staged.add_bytes(
        "etc/fleet/board.env",
        shell_env(
            {
                "FLEET_BOARD": profile.name,
                "FLEET_BOOT_METHOD": profile.boot_method,
                "FLEET_DISK": storage.linux_disk,
                "FLEET_FIRMWARE_DEV": storage.partition(1),
                "FLEET_DATA_DEV": storage.partition(7),
                "FLEET_NET_IF": profile.network.interface,
                "FLEET_WIFI_IF": wifi.interface if wifi else "",
                "FLEET_GADGET_IF": profile.gadget.interface if profile.gadget else "",
                "FLEET_WATCHDOG": profile.watchdog_module or "",
                "FLEET_SHELL_KEYS": "yes" if development else "no",
            }
        ),
        "fleet",
    )
    health = project.health
    staged.add_bytes(
        "etc/fleet/app.env",
        shell_env(
            {
                "FLEET_APP_NAME": project.name,
                "FLEET_APP_VERSION": project.version,
                "FLEET_RELEASE": str(release_number),
                "FLEET_APP_COMMAND": project.run,
                "PORT": str(project.port),
                "FLEET_HEALTH_HTTP": health.http or "",
                "FLEET_HEALTH_COMMAND": health.command or "",
                "FLEET_HEALTH_TIMEOUT": str(health.timeout_s),
                "FLEET_HEALTH_MAX_EXITS": str(health.max_exits),
                "FLEET_HEALTH_CHECK_TIMEOUT": str(health.check_timeout_s),
                "FLEET_APP_UID": str(APP_UID),
            }
        ),
        "fleet",
    )
