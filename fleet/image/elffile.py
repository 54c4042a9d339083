"""A small ELF reader for the checks fleet makes on what goes into an image.

It reads only what those checks need: class, byte order, type, machine, the program
interpreter, the dynamic section's NEEDED/RPATH/RUNPATH/SONAME, and sections by name.
Input is untrusted (a user's binary, a file from a package): every offset and size is
checked against the file before it is used, and a malformed file is a BuildError that
names the file, never an exception from ``struct`` or indexing.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from fleet.errors import BuildError

MAGIC = b"\x7fELF"

ET_REL, ET_EXEC, ET_DYN, ET_CORE = 1, 2, 3, 4
PT_LOAD, PT_DYNAMIC, PT_INTERP = 1, 2, 3
SHT_NOBITS = 8
SHN_UNDEF, SHN_LORESERVE, SHN_XINDEX = 0, 0xFF00, 0xFFFF
DT_NULL, DT_NEEDED, DT_STRTAB, DT_STRSZ = 0, 1, 5, 10
DT_SONAME, DT_RPATH, DT_RUNPATH = 14, 15, 29

EM_386, EM_ARM, EM_X86_64, EM_AARCH64, EM_RISCV = 3, 40, 62, 183, 243
EF_ARM_ABI_FLOAT_SOFT = 0x200

# Names as binutils' readelf prints them, except x86-64 which users know by that name.
MACHINE_NAMES = {
    2: "SPARC",
    EM_386: "Intel 80386",
    8: "MIPS",
    20: "PowerPC",
    21: "PowerPC64",
    22: "IBM S/390",
    EM_ARM: "ARM",
    43: "SPARC v9",
    50: "IA-64",
    EM_X86_64: "x86-64",
    EM_AARCH64: "AArch64",
    EM_RISCV: "RISC-V",
    258: "LoongArch",
}

# (ehdr after e_ident, phdr, shdr, dyn) per class; field order differs between them.
_LAYOUT = {
    32: ("HHIIIIIHHHHHH", "IIIIIIII", "IIIIIIIIII", "iI"),
    64: ("HHIQQQIHHHHHH", "IIQQQQQQ", "IIQQQQIIQQ", "qQ"),
}


@dataclass(frozen=True)
class Section:
    name: str
    type: int
    offset: int
    size: int


@dataclass(frozen=True)
class ElfFile:
    bits: int  # 32 or 64
    little_endian: bool
    type: int  # ET_REL, ET_EXEC, ET_DYN, ...
    machine: int  # e_machine
    flags: int  # e_flags (ARM keeps its float ABI here)
    interpreter: str | None  # PT_INTERP, e.g. /lib/ld-linux-aarch64.so.1
    needed: tuple[str, ...]  # DT_NEEDED in file order
    rpath: tuple[str, ...]  # DT_RPATH, split on ':'
    runpath: tuple[str, ...]  # DT_RUNPATH, split on ':'
    soname: str | None
    sections: tuple[Section, ...]

    @property
    def machine_name(self) -> str:
        return MACHINE_NAMES.get(self.machine, f"machine {self.machine}")

    def section(self, name: str) -> Section | None:
        for section in self.sections:
            if section.name == name:
                return section
        return None


class _Reader:
    def __init__(self, data: bytes, label: str) -> None:
        self.data = data
        self.label = label
        self.order = "<"

    def fail(self, reason: str) -> BuildError:
        return BuildError(f"{self.label}: not a valid ELF file: {reason}")

    def unpack(self, fmt: str, offset: int, what: str) -> tuple[int, ...]:
        size = struct.calcsize(self.order + fmt)
        if offset < 0 or offset + size > len(self.data):
            raise self.fail(f"{what} at offset {offset} is past the end of the file")
        return struct.unpack_from(self.order + fmt, self.data, offset)

    def span(self, offset: int, size: int, what: str) -> bytes:
        if offset < 0 or size < 0 or offset + size > len(self.data):
            raise self.fail(f"{what} ({size} bytes at offset {offset}) is past the end of the file")
        return self.data[offset : offset + size]

    def table(
        self, offset: int, count: int, entsize: int, fmt: str, what: str
    ) -> list[tuple[int, ...]]:
        need = struct.calcsize(self.order + fmt)
        if count == 0:
            return []
        if entsize < need:
            raise self.fail(f"{what} entries are {entsize} bytes, expected at least {need}")
        if offset < 0 or offset + count * entsize > len(self.data):
            raise self.fail(f"{what} table ({count} entries at offset {offset}) is past the end")
        return [self.unpack(fmt, offset + i * entsize, what) for i in range(count)]


def _cstring(blob: bytes, offset: int, reader: _Reader, what: str) -> str:
    if offset < 0 or offset >= len(blob):
        raise reader.fail(f"{what} name offset {offset} is outside its string table")
    end = blob.find(b"\0", offset)
    if end < 0:
        raise reader.fail(f"{what} name at offset {offset} is not terminated")
    return blob[offset:end].decode("utf-8", errors="replace")


def parse(data: bytes, label: str = "<bytes>") -> ElfFile:
    """Parse an ELF image held in memory; ``label`` names it in error messages."""
    reader = _Reader(data, label)
    if len(data) < 16 or data[:4] != MAGIC:
        raise reader.fail("no ELF magic")
    bits = {1: 32, 2: 64}.get(data[4])
    if bits is None:
        raise reader.fail(f"unknown class {data[4]}")
    if data[5] not in (1, 2):
        raise reader.fail(f"unknown byte order {data[5]}")
    little = data[5] == 1
    reader.order = "<" if little else ">"
    ehdr_fmt, phdr_fmt, shdr_fmt, dyn_fmt = _LAYOUT[bits]
    (
        e_type,
        machine,
        _version,
        _entry,
        phoff,
        shoff,
        flags,
        _ehsize,
        phentsize,
        phnum,
        shentsize,
        shnum,
        shstrndx,
    ) = reader.unpack(ehdr_fmt, 16, "ELF header")

    phdrs = reader.table(phoff, phnum, phentsize, phdr_fmt, "program header")
    # (type, offset, vaddr, filesz) whatever the class's field order.
    segments = [(p[0], p[1], p[2], p[4]) if bits == 32 else (p[0], p[2], p[3], p[5]) for p in phdrs]
    interpreter = None
    for p_type, offset, _vaddr, filesz in segments:
        if p_type == PT_INTERP:
            raw = reader.span(offset, filesz, "PT_INTERP")
            interpreter = raw.split(b"\0", 1)[0].decode("utf-8", errors="replace")
    needed, rpath, runpath, soname = _dynamic(reader, segments, dyn_fmt)
    sections = _sections(reader, shoff, shnum, shentsize, shstrndx, shdr_fmt, bits)
    return ElfFile(
        bits=bits,
        little_endian=little,
        type=e_type,
        machine=machine,
        flags=flags,
        interpreter=interpreter,
        needed=tuple(needed),
        rpath=tuple(rpath),
        runpath=tuple(runpath),
        soname=soname,
        sections=tuple(sections),
    )


def _dynamic(
    reader: _Reader, segments: list[tuple[int, int, int, int]], dyn_fmt: str
) -> tuple[list[str], list[str], list[str], str | None]:
    """Read the dynamic section through the program headers, as the loader does, so
    that binaries stripped of their section headers are still understood."""
    dynamic = [s for s in segments if s[0] == PT_DYNAMIC]
    if not dynamic:
        return [], [], [], None
    _type, offset, _vaddr, filesz = dynamic[0]
    entsize = struct.calcsize(reader.order + dyn_fmt)
    entries: list[tuple[int, int]] = []
    for i in range(filesz // entsize):
        tag, value = reader.unpack(dyn_fmt, offset + i * entsize, "dynamic entry")
        if tag == DT_NULL:
            break
        entries.append((tag, value))
    strtab_addr = next((v for t, v in entries if t == DT_STRTAB), None)
    strsz = next((v for t, v in entries if t == DT_STRSZ), None)
    wanted = {DT_NEEDED, DT_SONAME, DT_RPATH, DT_RUNPATH}
    if not any(t in wanted for t, _ in entries):
        return [], [], [], None
    if strtab_addr is None or strsz is None:
        raise reader.fail("dynamic section has no DT_STRTAB/DT_STRSZ")
    strtab_offset = None
    for p_type, p_offset, vaddr, p_filesz in segments:
        if p_type == PT_LOAD and vaddr <= strtab_addr < vaddr + p_filesz:
            strtab_offset = p_offset + (strtab_addr - vaddr)
            break
    if strtab_offset is None:
        raise reader.fail(f"DT_STRTAB address {strtab_addr:#x} is in no loaded segment")
    strtab = reader.span(strtab_offset, strsz, "dynamic string table")
    needed: list[str] = []
    rpath: list[str] = []
    runpath: list[str] = []
    soname = None
    for tag, value in entries:
        if tag == DT_NEEDED:
            needed.append(_cstring(strtab, value, reader, "DT_NEEDED"))
        elif tag == DT_SONAME:
            soname = _cstring(strtab, value, reader, "DT_SONAME")
        elif tag == DT_RPATH:
            rpath.extend(p for p in _cstring(strtab, value, reader, "DT_RPATH").split(":") if p)
        elif tag == DT_RUNPATH:
            runpath.extend(p for p in _cstring(strtab, value, reader, "DT_RUNPATH").split(":") if p)
    return needed, rpath, runpath, soname


def _sections(
    reader: _Reader, shoff: int, shnum: int, shentsize: int, shstrndx: int, fmt: str, bits: int
) -> list[Section]:
    if shoff == 0:
        return []
    if shnum == 0 or shstrndx == SHN_XINDEX:
        # More sections than the header's 16-bit fields hold: the real numbers live in
        # section 0 (sh_size for the count, sh_link for the string table index).
        first = reader.table(shoff, 1, shentsize, fmt, "section header")[0]
        size0 = first[5]
        link0 = first[6]
        if shnum == 0:
            shnum = size0
        if shstrndx == SHN_XINDEX:
            shstrndx = link0
    if shnum > len(reader.data) // max(shentsize, 1):
        raise reader.fail(f"{shnum} section headers cannot fit in the file")
    rows = reader.table(shoff, shnum, shentsize, fmt, "section header")
    # (name offset, type, file offset, size) whatever the class.
    headers = [(r[0], r[1], r[4], r[5]) for r in rows]
    if shstrndx == SHN_UNDEF or shstrndx >= len(headers):
        return []
    _n, str_type, str_offset, str_size = headers[shstrndx]
    if str_type == SHT_NOBITS:
        raise reader.fail("section name table has no content")
    names = reader.span(str_offset, str_size, "section name table")
    sections = []
    for name_offset, sh_type, offset, size in headers:
        name = _cstring(names, name_offset, reader, "section") if name_offset else ""
        if sh_type != SHT_NOBITS:
            reader.span(offset, size, f"section {name or '?'}")
        sections.append(Section(name=name, type=sh_type, offset=offset, size=size))
    return sections


def read(path: Path, label: str | None = None) -> ElfFile:
    """Parse the ELF file at ``path``; errors name ``label`` (default: the path)."""
    return parse(_read_bytes(path), label or str(path))


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise BuildError(f"{path}: cannot read: {exc.strerror}") from exc


def is_elf(path: Path) -> bool:
    """True when ``path`` is a regular file starting with the ELF magic."""
    try:
        with path.open("rb") as handle:
            return handle.read(4) == MAGIC
    except OSError:
        return False


def section_bytes(source: Path | bytes, name: str) -> bytes | None:
    """The contents of section ``name`` (b"" for a section without file content, such as
    .bss), or None when the file has no such section."""
    if isinstance(source, bytes):
        data, label = source, "<bytes>"
    else:
        data, label = _read_bytes(source), str(source)
    elf = parse(data, label)
    section = elf.section(name)
    if section is None:
        return None
    if section.type == SHT_NOBITS:
        return b""
    return data[section.offset : section.offset + section.size]
