"""Cross-building the user's app: C through Debian's cross gcc, Go through GOARCH/GOARM,
or the user's own shell recipe. The same recipe builds for the host (``host=True``) so
the app can be run and tested on the desk before it goes into an image.

Builds are reproducible: sources are taken in sorted order, build paths are mapped away
(-ffile-prefix-map, -trimpath), Go's build id and VCS stamp are left out, and
SOURCE_DATE_EPOCH is set for anything that would read the clock.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from fleet.errors import BuildError
from fleet.image import elf
from fleet.project import Project
from fleet.run import run, which


@dataclass(frozen=True)
class Target:
    """What the compilers need to know about where the program will run."""

    name: str  # "aarch64", "armhf" or "host"
    cc: str
    triple: str
    goarch: str
    goarm: str  # "" unless goarch is arm


TARGETS = {
    "aarch64": Target("aarch64", "aarch64-linux-gnu-gcc", "aarch64-linux-gnu", "arm64", ""),
    "armhf": Target("armhf", "arm-linux-gnueabihf-gcc", "arm-linux-gnueabihf", "arm", "7"),
}
_HOST_GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}
# Build time stamps default to fleet's epoch (2020-01-01) so that no build reads the clock.
DEFAULT_EPOCH = 1577836800


def target_for(arch: str, host: bool = False) -> Target:
    if host:
        machine = platform.machine()
        goarch = _HOST_GOARCH.get(machine, machine)
        return Target("host", "cc", f"{machine}-linux-gnu", goarch, "7" if goarch == "arm" else "")
    try:
        return TARGETS[arch]
    except KeyError:
        raise BuildError(f"unknown architecture {arch!r} (expected aarch64 or armhf)") from None


def build_app(
    project: Project,
    arch: str,
    work: Path,
    *,
    host: bool = False,
    cache: Path | None = None,
    epoch: int | None = None,
) -> Path:
    """Build ``project`` for ``arch`` ("aarch64" or "armhf"), or for this machine when
    ``host`` is true, and return the built executable (``work/app-ARCH/OUTPUT``).

    ``cache`` holds Go's build cache and module folder (default ``work/cache``); keeping
    it between builds makes them fast and lets them run offline. ``epoch`` is the
    SOURCE_DATE_EPOCH (default: the environment's, else fleet's fixed epoch).
    """
    target = target_for(arch, host)
    cache = (cache or work / "cache").resolve()
    if epoch is None:
        epoch = int(os.environ.get("SOURCE_DATE_EPOCH", DEFAULT_EPOCH))
    out_dir = (work / f"app-{target.name}").resolve()
    # Build beside the result, then move it in: a failed build leaves no stale program.
    stage = out_dir / ".staging"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    staged = stage / project.build.output
    language = project.build.language
    if language == "c":
        _build_c(project, target, staged, epoch)
    elif language == "go":
        _build_go(project, target, staged, cache, epoch)
    else:
        _build_command(project, target, staged, cache, epoch)
    if not staged.is_file():
        raise BuildError(f"{project.name}: the build recipe did not write $OUT ({staged})")
    if not host:
        _check_machine(project, staged, arch)
    result = out_dir / project.build.output
    os.replace(staged, result)
    shutil.rmtree(stage, ignore_errors=True)
    return result


def source_files(project: Project) -> list[Path]:
    """The project's sources (globs from fleet.toml), relative to its folder, sorted."""
    found: set[Path] = set()
    for pattern in project.build.sources:
        matches = [p for p in project.root.glob(pattern) if p.is_file()]
        if not matches:
            raise BuildError(
                f"{project.root / 'fleet.toml'}: build.sources pattern {pattern!r} matches no file"
            )
        found.update(p.relative_to(project.root) for p in matches)
    return sorted(found)


def _reproducible_cflags(project: Project) -> list[str]:
    return [
        f"-ffile-prefix-map={project.root}=.",
        f"-frandom-seed={project.name}",
        "-Wl,--build-id=sha1",
    ]


def _version_define(project: Project) -> str:
    escaped = project.version.replace("\\", "\\\\").replace('"', '\\"')
    return f'-DAPP_VERSION="{escaped}"'


def _build_c(project: Project, target: Target, out: Path, epoch: int) -> None:
    sources = [s for s in source_files(project) if s.suffix == ".c"]
    if not sources:
        raise BuildError(f"{project.name}: build.sources names no .c file")
    cmd: list[str | Path] = [
        target.cc,
        *_reproducible_cflags(project),
        _version_define(project),
        *project.build.flags,
        "-o",
        out,
        *sources,
    ]
    if target.name != "host":
        # Symbols are for debugging on the desk; the image stays small.
        cmd.append("-s")
    _compile(project, cmd, {"SOURCE_DATE_EPOCH": str(epoch), "LC_ALL": "C"})


def _go_env(target: Target, cache: Path, epoch: int) -> dict[str, str]:
    env = {
        "CGO_ENABLED": "0",
        "GOCACHE": str(cache / "go-build"),
        "GOPATH": str(cache / "gopath"),
        "GOMODCACHE": str(cache / "gopath" / "pkg" / "mod"),
        # No user or system go.env may change the build; no toolchain download either.
        "GOENV": "off",
        "GOTOOLCHAIN": "local",
        "GOFLAGS": "",
        "SOURCE_DATE_EPOCH": str(epoch),
        "LC_ALL": "C",
    }
    if target.name != "host":
        env.update({"GOOS": "linux", "GOARCH": target.goarch})
        if target.goarm:
            env["GOARM"] = target.goarm
    return env


def _build_go(project: Project, target: Target, out: Path, cache: Path, epoch: int) -> None:
    go_files = [s for s in source_files(project) if s.suffix == ".go"]
    packages = sorted({s.parent for s in go_files})
    if len(packages) != 1:
        where = ", ".join(str(p) for p in packages) or "none"
        raise BuildError(
            f"{project.name}: build.sources must name the .go files of one main package "
            f"(found folders: {where})"
        )
    package = "./" + packages[0].as_posix() if packages[0] != Path(".") else "."
    version = project.version.replace("'", "")
    ldflags = f"-s -w -buildid= -X 'main.version={version}'"
    cmd: list[str | Path] = [
        "go",
        "build",
        "-trimpath",
        "-buildvcs=false",
        "-ldflags",
        ldflags,
        *project.build.flags,
        "-o",
        out,
        package,
    ]
    _compile(project, cmd, _go_env(target, cache, epoch))


def _build_command(project: Project, target: Target, out: Path, cache: Path, epoch: int) -> None:
    assert project.build.command is not None
    # Plain words, as make and configure scripts expect $CFLAGS; the version is in
    # $APP_VERSION for a recipe that wants to compile it in.
    cflags = " ".join([*_reproducible_cflags(project), *project.build.flags])
    env = _go_env(target, cache, epoch)
    env.update(
        {
            "CC": which(target.cc) if target.name != "host" else target.cc,
            "CFLAGS": cflags,
            "GOARCH": target.goarch,
            "GOARM": target.goarm,
            "OUT": str(out),
            "TARGET_TRIPLE": target.triple,
            "APP_NAME": project.name,
            "APP_VERSION": project.version,
        }
    )
    _compile(project, ["sh", "-ec", project.build.command], env)


_ERROR_LINE = re.compile(r"(\berror\b|undefined|cannot|not found|No such file)", re.IGNORECASE)


def _compile(project: Project, cmd: list[str | Path], env: dict[str, str]) -> None:
    proc = run(cmd, cwd=project.root, env=env, check=False)
    if proc.returncode == 0:
        return
    text = (proc.stderr or b"").decode(errors="replace") + (proc.stdout or b"").decode(
        errors="replace"
    )
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    # The first error is the cause; later ones are usually its consequences.
    first = next((line for line in lines if _ERROR_LINE.search(line)), None)
    if first is None:
        first = next((line for line in lines if not line.startswith("#")), "no output")
    tool = os.path.basename(str(cmd[0]))
    raise BuildError(f"{project.name}: build failed ({tool}, exit {proc.returncode}): {first}")


def _check_machine(project: Project, program: Path, arch: str) -> None:
    if not elf.is_elf(program):
        raise BuildError(
            f"{project.name}: the build made {program.name}, which is not an ELF program"
        )
    built = elf.read(program, label=program.name)
    if not elf.fits(built, arch):
        raise BuildError(
            f"{project.name}: the build made {program.name} for {elf.describe(built)}, "
            f"but {arch} was asked for"
        )
