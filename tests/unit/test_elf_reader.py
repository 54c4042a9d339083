"""The ELF reader on synthetic files of every class and byte order, and on garbage."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from elf_maker import EM_AARCH64, EM_ARM, EM_X86_64, ET_EXEC, ET_REL, make_elf
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.errors import BuildError
from fleet.image import elf

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("bits", [32, 64])
@pytest.mark.parametrize("little", [True, False])
def test_reads_header_interpreter_and_dynamic_section(bits: int, little: bool) -> None:
    data = make_elf(
        bits=bits,
        little=little,
        machine=EM_ARM if bits == 32 else EM_AARCH64,
        e_type=ET_EXEC,
        interp="/lib/ld-linux-armhf.so.3",
        needed=["libc.so.6", "libfoo.so.1"],
        rpath="$ORIGIN/../lib:/opt/x",
        soname="libself.so.2",
        sections={".modinfo": b"license=GPL\0name=x\0", ".comment": b"hi\0"},
    )
    parsed = elf.parse(data, "x")
    assert parsed.bits == bits
    assert parsed.little_endian is little
    assert parsed.type == ET_EXEC
    assert parsed.machine_name == ("ARM" if bits == 32 else "AArch64")
    assert parsed.interpreter == "/lib/ld-linux-armhf.so.3"
    assert parsed.needed == ("libc.so.6", "libfoo.so.1")
    assert parsed.rpath == ("$ORIGIN/../lib", "/opt/x")
    assert parsed.runpath == ()
    assert parsed.soname == "libself.so.2"
    assert elf.section_bytes(data, ".modinfo") == b"license=GPL\0name=x\0"
    assert elf.section_bytes(data, ".nothere") is None


def test_section_bytes_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "m.ko"
    path.write_bytes(make_elf(e_type=ET_REL, sections={".modinfo": b"depends=a,b\0"}))
    assert elf.section_bytes(path, ".modinfo") == b"depends=a,b\0"


def test_runpath_is_kept_apart_from_rpath() -> None:
    parsed = elf.parse(make_elf(needed=["a.so"], runpath="/x:/y"))
    assert parsed.runpath == ("/x", "/y")
    assert parsed.rpath == ()


def test_static_file_has_no_dynamic_information() -> None:
    parsed = elf.parse(make_elf(machine=EM_X86_64))
    assert (parsed.interpreter, parsed.needed, parsed.soname, parsed.sections) == (
        None,
        (),
        None,
        (),
    )
    assert elf.describe(parsed) == "x86-64"


def test_describe_names_soft_float_and_big_endian() -> None:
    soft = elf.parse(make_elf(bits=32, machine=EM_ARM, flags=0x5000200))
    assert elf.describe(soft) == "ARM soft-float (armel)"
    assert not elf.fits(soft, "armhf")
    hard = elf.parse(make_elf(bits=32, machine=EM_ARM, flags=0x5000400))
    assert elf.fits(hard, "armhf")
    big = elf.parse(make_elf(little=False))
    assert elf.describe(big) == "AArch64 big-endian"
    assert not elf.fits(big, "aarch64")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "no ELF magic"),
        (b"MZ\x90\x00" + bytes(100), "no ELF magic"),
        (b"\x7fELF\x03\x01\x01" + bytes(60), "unknown class 3"),
        (b"\x7fELF\x02\x07\x01" + bytes(60), "unknown byte order 7"),
        (b"\x7fELF\x02\x01\x01" + bytes(20), "ELF header at offset 16 is past the end"),
    ],
)
def test_malformed_headers_are_named(data: bytes, reason: str) -> None:
    with pytest.raises(BuildError) as info:
        elf.parse(data, "app/bin/x")
    assert str(info.value).startswith("app/bin/x: not a valid ELF file: ")
    assert reason in str(info.value)


def test_truncated_file_is_a_build_error() -> None:
    data = make_elf(interp="/lib/ld.so", needed=["libc.so.6"], sections={".a": b"x" * 64})
    for cut in range(0, len(data) - 1, 7):
        with pytest.raises(BuildError):
            elf.parse(data[:cut])


def test_string_offset_outside_table_is_refused() -> None:
    data = bytearray(make_elf(needed=["libc.so.6"]))
    # Point DT_NEEDED (the first dynamic entry) far past the string table.
    parsed_ok = elf.parse(bytes(data))
    assert parsed_ok.needed == ("libc.so.6",)
    needle = struct.pack("<qQ", 1, 1)
    where = bytes(data).index(needle)
    data[where : where + 16] = struct.pack("<qQ", 1, 10_000)
    with pytest.raises(BuildError, match="DT_NEEDED name offset 10000 is outside"):
        elf.parse(bytes(data))


def test_huge_section_count_is_refused_without_allocating() -> None:
    data = bytearray(make_elf(sections={".a": b"1"}))
    # e_shnum lives at offset 60 in a 64-bit header.
    data[60:62] = struct.pack("<H", 0xFFFE)
    with pytest.raises(BuildError, match="section header"):
        elf.parse(bytes(data))


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_random_corruption_never_escapes_as_another_exception(data: st.DataObject) -> None:
    base = bytearray(
        make_elf(
            bits=data.draw(st.sampled_from([32, 64])),
            little=data.draw(st.booleans()),
            interp="/lib/ld-linux-aarch64.so.1",
            needed=["libc.so.6"],
            runpath="$ORIGIN",
            sections={".modinfo": b"a=b\0"},
        )
    )
    for _ in range(data.draw(st.integers(1, 8))):
        index = data.draw(st.integers(0, len(base) - 1))
        base[index] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(base)))
    try:
        elf.parse(bytes(base[:cut]))
        elf.section_bytes(bytes(base[:cut]), ".modinfo")
    except BuildError:
        pass
