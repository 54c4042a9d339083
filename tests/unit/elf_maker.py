"""Builds small synthetic ELF files in memory, so the reader and the image checks can be
tested on every class, byte order and machine without a compiler for each."""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence

EM_AARCH64, EM_ARM, EM_X86_64 = 183, 40, 62
ET_REL, ET_EXEC, ET_DYN = 1, 2, 3


def make_elf(
    *,
    bits: int = 64,
    little: bool = True,
    machine: int = EM_AARCH64,
    e_type: int = ET_DYN,
    flags: int = 0,
    interp: str | None = None,
    needed: Sequence[str] = (),
    rpath: str | None = None,
    runpath: str | None = None,
    soname: str | None = None,
    sections: Mapping[str, bytes] | None = None,
) -> bytes:
    order = "<" if little else ">"
    ehsize, phentsize, shentsize = (64, 56, 64) if bits == 64 else (52, 32, 40)
    addr = "Q" if bits == 64 else "I"

    dynstr = bytearray(b"\0")

    def add_str(text: str) -> int:
        offset = len(dynstr)
        dynstr.extend(text.encode() + b"\0")
        return offset

    dyn_entries: list[tuple[int, int]] = [(1, add_str(n)) for n in needed]
    if soname is not None:
        dyn_entries.append((14, add_str(soname)))
    if rpath is not None:
        dyn_entries.append((15, add_str(rpath)))
    if runpath is not None:
        dyn_entries.append((29, add_str(runpath)))
    has_dynamic = bool(dyn_entries)
    nphdr = 1 + (interp is not None) + has_dynamic

    body = bytearray()
    base = ehsize + nphdr * phentsize

    def place(blob: bytes) -> int:
        while (base + len(body)) % 8:
            body.append(0)
        offset = base + len(body)
        body.extend(blob)
        return offset

    phdrs: list[tuple[int, int, int, int]] = []  # type, offset, vaddr, size
    if interp is not None:
        raw = interp.encode() + b"\0"
        phdrs.append((3, place(raw), 0, len(raw)))
    if has_dynamic:
        strtab_off = place(bytes(dynstr))
        dyn_entries += [(5, strtab_off), (10, len(dynstr)), (0, 0)]
        dyn_fmt = order + ("qQ" if bits == 64 else "iI")
        dyn_raw = b"".join(struct.pack(dyn_fmt, t, v) for t, v in dyn_entries)
        phdrs.append((2, place(dyn_raw), 0, len(dyn_raw)))

    shdrs: list[tuple[int, int, int, int]] = []  # name offset, type, offset, size
    shstr = bytearray(b"\0")
    for name, blob in (sections or {}).items():
        name_off = len(shstr)
        shstr.extend(name.encode() + b"\0")
        shdrs.append((name_off, 1, place(blob), len(blob)))
    shoff = shnum = shstrndx = 0
    if shdrs:
        name_off = len(shstr)
        shstr.extend(b".shstrtab\0")
        shdrs.append((name_off, 3, place(bytes(shstr)), len(shstr)))
        shdrs.insert(0, (0, 0, 0, 0))
        shstrndx = len(shdrs) - 1
        shnum = len(shdrs)
        shoff = place(b"")
        for name_off, sh_type, offset, size in shdrs:
            if bits == 64:
                body.extend(
                    struct.pack(
                        order + "IIQQQQIIQQ", name_off, sh_type, 0, 0, offset, size, 0, 0, 1, 0
                    )
                )
            else:
                body.extend(
                    struct.pack(
                        order + "IIIIIIIIII", name_off, sh_type, 0, 0, offset, size, 0, 0, 1, 0
                    )
                )
    total = base + len(body)
    # One PT_LOAD maps the whole file at address 0, so addresses equal file offsets.
    phdrs.insert(0, (1, 0, 0, total))

    ident = b"\x7fELF" + bytes([2 if bits == 64 else 1, 1 if little else 2, 1]) + bytes(9)
    header = ident + struct.pack(
        order + f"HHI{addr}{addr}{addr}IHHHHHH",
        e_type,
        machine,
        1,
        0,
        ehsize,
        shoff,
        flags,
        ehsize,
        phentsize,
        nphdr,
        shentsize,
        shnum,
        shstrndx,
    )
    ph = bytearray()
    for p_type, offset, _vaddr, size in phdrs:
        if bits == 64:
            ph.extend(
                struct.pack(order + "IIQQQQQQ", p_type, 4, offset, offset, offset, size, size, 8)
            )
        else:
            ph.extend(
                struct.pack(order + "IIIIIIII", p_type, offset, offset, offset, size, size, 4, 4)
            )
    return bytes(header + ph + body)
