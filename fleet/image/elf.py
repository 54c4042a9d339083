"""Checks on the ELF files that go into an image, made before the image is written.

A binary that runs on the build host but not on the board is the classic cross-build
mistake; the board would only say "not found" or "Exec format error" at boot. So every
executable and shared library in an assembled root is checked here for the board's
machine, its program interpreter and every library it needs, resolved the way glibc's
loader on a Debian multiarch system resolves them (RPATH, RUNPATH with $ORIGIN, then
the multiarch and plain lib folders), with symlinks followed inside the image only.

The reader itself lives in ``fleet.image.elffile``; its public names are re-exported.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from fleet.errors import BuildError
from fleet.image.chroot_path import Resolved, resolve_file
from fleet.image.elffile import (
    EF_ARM_ABI_FLOAT_SOFT,
    EM_AARCH64,
    EM_ARM,
    ET_CORE,
    ET_DYN,
    ET_REL,
    ElfFile,
    Section,
    is_elf,
    parse,
    read,
    section_bytes,
)

__all__ = [
    "ElfFile",
    "Section",
    "check_tree",
    "is_elf",
    "needed_closure",
    "parse",
    "read",
    "section_bytes",
    "tree_problems",
]

TRIPLES = {"aarch64": "aarch64-linux-gnu", "armhf": "arm-linux-gnueabihf"}
# What each fleet architecture needs: (e_machine, ELF class).
_WANT = {"aarch64": (EM_AARCH64, 64), "armhf": (EM_ARM, 32)}
_WANT_NAME = {"aarch64": "AArch64", "armhf": "ARM (armhf, hard-float)"}
# Kernel modules are loaded by the kernel, not the dynamic loader; they are checked
# when the kernel is assembled.
_SKIP_SUFFIXES = (".ko", ".o")


def default_lib_dirs(arch: str) -> tuple[str, ...]:
    """The folders Debian's glibc loader searches when nothing else names a library."""
    triple = _triple(arch)
    return (f"/lib/{triple}", f"/usr/lib/{triple}", "/lib", "/usr/lib")


def _triple(arch: str) -> str:
    try:
        return TRIPLES[arch]
    except KeyError:
        raise BuildError(f"unknown architecture {arch!r} (expected aarch64 or armhf)") from None


def describe(elf: ElfFile) -> str:
    """How a user would name what a binary was built for: 'x86-64', 'ARM soft-float'."""
    words = [elf.machine_name]
    if elf.machine == EM_ARM and elf.flags & EF_ARM_ABI_FLOAT_SOFT:
        words.append("soft-float (armel)")
    if elf.machine in (EM_AARCH64, EM_ARM) and elf.bits != (
        64 if elf.machine == EM_AARCH64 else 32
    ):
        words.append(f"{elf.bits}-bit")
    if not elf.little_endian:
        words.append("big-endian")
    return " ".join(words)


def fits(elf: ElfFile, arch: str) -> bool:
    """True when ``elf`` can run on (or be loaded into a process on) an ``arch`` board."""
    machine, bits = _WANT[arch]
    if elf.machine != machine or elf.bits != bits or not elf.little_endian:
        return False
    return not (machine == EM_ARM and elf.flags & EF_ARM_ABI_FLOAT_SOFT)


@dataclass
class _Image:
    """One image root with a cache of parsed ELF files, keyed by image path."""

    root: Path
    arch: str
    parsed: dict[PurePosixPath, ElfFile | None] = field(default_factory=dict)

    def elf(self, path: PurePosixPath) -> ElfFile | None:
        """The parsed file at image path ``path`` (already resolved), or None if not ELF."""
        if path not in self.parsed:
            host = self.root.joinpath(*path.parts)
            self.parsed[path] = read(host, label=str(path)) if is_elf(host) else None
        return self.parsed[path]

    def expand(self, entry: str, origin: PurePosixPath | None) -> str | None:
        """Expand the loader's dynamic string tokens in an RPATH/RUNPATH entry."""
        triple = TRIPLES[self.arch]
        for token, value in (("$LIB", f"lib/{triple}"), ("${LIB}", f"lib/{triple}")):
            entry = entry.replace(token, value)
        platform = "aarch64" if self.arch == "aarch64" else "v7l"
        entry = entry.replace("${PLATFORM}", platform).replace("$PLATFORM", platform)
        if "$ORIGIN" in entry or "${ORIGIN}" in entry:
            if origin is None:
                return None
            where = "/" + str(origin)
            entry = entry.replace("${ORIGIN}", where).replace("$ORIGIN", where)
        return entry

    def find(
        self, name: str, dirs: Iterable[str]
    ) -> tuple[Resolved | None, ElfFile | None, list[str]]:
        """Search ``dirs`` for library ``name``; a file of the wrong machine is skipped,
        as the loader skips it. Returns the hit, its ELF, and the folders looked in."""
        looked: list[str] = []
        candidates: list[str]
        if "/" in name:
            candidates = [name]
            looked.append(name)
        else:
            candidates = []
            for folder in dirs:
                # Shown tidied (/app/bin/../lib as /app/lib); looked up as written, since
                # a symlinked folder makes ".." mean something else.
                shown = posixpath.normpath(folder)
                if shown not in looked:
                    looked.append(shown)
                candidate = f"{folder.rstrip('/')}/{name}"
                if candidate not in candidates:
                    candidates.append(candidate)
        for candidate in candidates:
            hit = resolve_file(self.root, candidate)
            if hit is None:
                continue
            elf = self.elf(hit.path)
            if elf is not None and fits(elf, self.arch):
                return hit, elf, looked
        return None, None, looked


@dataclass
class _Walk:
    """Loads one process's worth of objects the way ld.so does, breadth first."""

    image: _Image
    problems: list[str] = field(default_factory=list)
    reached: set[PurePosixPath] = field(default_factory=set)

    def process(self, label: str, origin: PurePosixPath | None, elf: ElfFile) -> None:
        if elf.interpreter:
            hit = resolve_file(self.image.root, elf.interpreter)
            if hit is None:
                self.problems.append(
                    f"{label}: needs the program interpreter {elf.interpreter}, "
                    "which is not in the image"
                )
            else:
                self._keep(hit)
        loaded: dict[str, PurePosixPath] = {}
        # Each entry: the object, its label, its folder, and its loaders' RPATH chain.
        queue: list[tuple[ElfFile, str, PurePosixPath | None, tuple[str, ...]]] = [
            (elf, label, origin, ())
        ]
        while queue:
            obj, obj_label, obj_origin, inherited = queue.pop(0)
            own_rpath = tuple(
                e for e in (self.image.expand(r, obj_origin) for r in obj.rpath) if e is not None
            )
            runpath = tuple(
                e for e in (self.image.expand(r, obj_origin) for r in obj.runpath) if e is not None
            )
            # With DT_RUNPATH present, glibc ignores DT_RPATH of the object and its loaders.
            chain = () if runpath else own_rpath + inherited
            dirs = chain + runpath + default_lib_dirs(self.image.arch)
            for name in obj.needed:
                if name in loaded:
                    continue
                hit, lib, looked = self.image.find(name, dirs)
                if hit is None or lib is None:
                    self.problems.append(
                        f"{obj_label}: needs {name}, which is not in the image "
                        f"(looked in {', '.join(looked)})"
                    )
                    continue
                loaded[name] = hit.path
                if lib.soname:
                    loaded.setdefault(lib.soname, hit.path)
                self._keep(hit)
                queue.append((lib, str(hit.path), hit.path.parent, chain))

    def _keep(self, hit: Resolved) -> None:
        self.reached.update(hit.links)
        self.reached.add(hit.path)


def _elf_files(root: Path) -> Iterable[PurePosixPath]:
    """Image paths of the regular ELF files under ``root``, in a stable order."""
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        base = Path(folder)
        for name in sorted(files):
            host = base / name
            if name.endswith(_SKIP_SUFFIXES) or host.is_symlink() or not host.is_file():
                continue
            if is_elf(host):
                yield PurePosixPath(host.relative_to(root).as_posix())


def tree_problems(root: Path, arch: str, board: str) -> list[str]:
    """Every reason the ELF files under ``root`` would not run on ``board``; empty when
    all is well. Malformed ELF files raise BuildError."""
    _triple(arch)
    image = _Image(root, arch)
    problems: list[str] = []
    walk = _Walk(image)
    libraries: list[PurePosixPath] = []
    for path in _elf_files(root):
        elf = image.elf(path)
        if elf is None or elf.type in (ET_REL, ET_CORE):
            continue
        if not fits(elf, arch):
            problems.append(
                f"{path}: built for {describe(elf)}, but board {board} needs {_WANT_NAME[arch]}"
            )
        elif elf.interpreter is None and elf.type == ET_DYN:
            libraries.append(path)
        else:
            walk.process(str(path), path.parent, elf)
    # Libraries are checked as the programs load them (a program's RPATH also serves its
    # libraries); one that no program loads is checked on its own.
    for path in libraries:
        if path not in walk.reached:
            elf = image.elf(path)
            assert elf is not None
            walk.process(str(path), path.parent, elf)
    # A library reached from several binaries reports the same missing name once.
    return list(dict.fromkeys(problems + walk.problems))


def _arch_of(elf: ElfFile, label: str) -> str:
    for arch in _WANT:
        if fits(elf, arch):
            return arch
    raise BuildError(f"{label}: built for {describe(elf)}, which fleet has no boards for")


def check_tree(root: Path, arch: str, board: str) -> None:
    """Raise BuildError naming the first problem (and how many more) under ``root``."""
    problems = tree_problems(root, arch, board)
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise BuildError(problems[0] + more)


def needed_closure(
    root: Path, start_files: Iterable[Path], arch: str | None = None
) -> set[PurePosixPath]:
    """The image paths under ``root`` that ``start_files`` need to run: their program
    interpreters and libraries, transitively, with every symlink met on the way (copy
    those as symlinks, or the loader will not find the names it asks for).

    ``start_files`` are host paths, inside ``root`` or not (an app built elsewhere);
    $ORIGIN is honoured for those inside. ``arch`` defaults to the first file's. A
    library that cannot be found is a BuildError.
    """
    starts = sorted(start_files)
    if not starts:
        return set()
    if arch is None:
        arch = _arch_of(read(starts[0]), str(starts[0]))
    _triple(arch)
    image = _Image(root, arch)
    walk = _Walk(image)
    real_root = root.resolve()
    for start in starts:
        origin: PurePosixPath | None = None
        try:
            relative = start.resolve().relative_to(real_root)
            origin = PurePosixPath(relative.as_posix()).parent
            label = str(PurePosixPath(relative.as_posix()))
        except ValueError:
            label = str(start)
        elf = read(start)
        if not fits(elf, arch):
            raise BuildError(
                f"{label}: built for {describe(elf)}, but the image is {_WANT_NAME[arch]}"
            )
        walk.process(label, origin, elf)
    if walk.problems:
        raise BuildError(walk.problems[0])
    return walk.reached
