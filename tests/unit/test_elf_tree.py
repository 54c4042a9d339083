"""Image ELF checks on synthetic root folders: machine, interpreter, libraries, symlinks."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import pytest
from elf_maker import EM_ARM, EM_X86_64, ET_EXEC, ET_REL, make_elf

from fleet.errors import BuildError
from fleet.image import elf

pytestmark = pytest.mark.unit

INTERP = "/lib/ld-linux-aarch64.so.1"
MULTI = "usr/lib/aarch64-linux-gnu"
LOOKED = "(looked in /lib/aarch64-linux-gnu, /usr/lib/aarch64-linux-gnu, /lib, /usr/lib)"


def put(root: Path, path: str, data: bytes) -> Path:
    target = root / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return target


def link(root: Path, path: str, target: str) -> None:
    where = root / path
    where.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, where)


@pytest.fixture()
def image(tmp_path: Path) -> Path:
    """A merged-/usr aarch64 root: /lib is a symlink, the interpreter an absolute one."""
    root = tmp_path / "root"
    put(root, f"{MULTI}/ld-linux-aarch64.so.1", make_elf(soname="ld-linux-aarch64.so.1"))
    put(
        root,
        f"{MULTI}/libc.so.6",
        make_elf(interp=INTERP, needed=["ld-linux-aarch64.so.1"], soname="libc.so.6"),
    )
    link(root, "lib", "usr/lib")
    link(root, f"{MULTI}/../ld-linux-aarch64.so.1", f"/{MULTI}/ld-linux-aarch64.so.1")
    return root


def app(**kw: object) -> bytes:
    args: dict[str, object] = {"e_type": ET_EXEC, "interp": INTERP, "needed": ["libc.so.6"]}
    args.update(kw)
    return make_elf(**args)  # type: ignore[arg-type]


def test_a_complete_image_passes(image: Path) -> None:
    put(image, "app/bin/hello", app())
    assert elf.tree_problems(image, "aarch64", "qemu-virt-arm64") == []
    elf.check_tree(image, "aarch64", "qemu-virt-arm64")


def test_host_binary_is_refused_with_its_machine(image: Path) -> None:
    put(image, "app/bin/hello", app(machine=EM_X86_64))
    with pytest.raises(BuildError) as info:
        elf.check_tree(image, "aarch64", "qemu-virt-arm64")
    assert str(info.value) == (
        "app/bin/hello: built for x86-64, but board qemu-virt-arm64 needs AArch64"
    )


def test_armhf_board_refuses_aarch64_and_soft_float(image: Path) -> None:
    put(image, "app/bin/a", app())
    put(image, "app/bin/b", make_elf(bits=32, machine=EM_ARM, e_type=ET_EXEC, flags=0x5000200))
    problems = elf.tree_problems(image, "armhf", "rpi3b-32")
    assert (
        "app/bin/a: built for AArch64, but board rpi3b-32 needs ARM (armhf, hard-float)" in problems
    )
    assert (
        "app/bin/b: built for ARM soft-float (armel), "
        "but board rpi3b-32 needs ARM (armhf, hard-float)" in problems
    )


def test_missing_library_names_binary_library_and_folders(image: Path) -> None:
    put(image, "app/bin/hello", app(needed=["libfoo.so.1", "libc.so.6"]))
    with pytest.raises(BuildError) as info:
        elf.check_tree(image, "aarch64", "qemu-virt-arm64")
    assert str(info.value) == (
        f"app/bin/hello: needs libfoo.so.1, which is not in the image {LOOKED}"
    )


def test_missing_interpreter(tmp_path: Path) -> None:
    put(tmp_path, "app/bin/hello", app(needed=[]))
    assert elf.tree_problems(tmp_path, "aarch64", "b") == [
        "app/bin/hello: needs the program interpreter /lib/ld-linux-aarch64.so.1, "
        "which is not in the image"
    ]


def test_several_problems_are_counted(image: Path) -> None:
    put(image, "app/bin/a", app(needed=["libx.so"]))
    put(image, "app/bin/b", app(machine=EM_X86_64))
    with pytest.raises(BuildError, match=r"\(and 1 more problems\)$"):
        elf.check_tree(image, "aarch64", "b")


def test_absolute_symlink_never_reaches_the_host(image: Path) -> None:
    # The host surely has /etc/passwd; a link to it must be looked up inside the image.
    link(image, f"{MULTI}/libhost.so", "/etc/passwd")
    put(image, "app/bin/hello", app(needed=["libhost.so"]))
    assert elf.tree_problems(image, "aarch64", "b") == [
        f"app/bin/hello: needs libhost.so, which is not in the image {LOOKED}"
    ]


def test_dotdot_in_a_symlink_stops_at_the_root(image: Path) -> None:
    link(image, f"{MULTI}/libup.so", "../../../../../../../usr/lib/aarch64-linux-gnu/libc.so.6")
    put(image, "app/bin/hello", app(needed=["libup.so"]))
    assert elf.tree_problems(image, "aarch64", "b") == []


def test_symlink_loop_is_not_found(image: Path) -> None:
    link(image, f"{MULTI}/libloop.so", "libloop2.so")
    link(image, f"{MULTI}/libloop2.so", "libloop.so")
    put(image, "app/bin/hello", app(needed=["libloop.so"]))
    assert len(elf.tree_problems(image, "aarch64", "b")) == 1


def test_origin_runpath(image: Path) -> None:
    put(image, "app/lib/libapp.so", make_elf(needed=["libc.so.6"], soname="libapp.so"))
    put(image, "app/bin/hello", app(needed=["libapp.so", "libc.so.6"], runpath="$ORIGIN/../lib"))
    assert elf.tree_problems(image, "aarch64", "b") == []


def test_rpath_of_the_program_serves_its_libraries_but_runpath_does_not(image: Path) -> None:
    put(image, "app/lib/libfoo.so", make_elf(needed=["libbar.so"]))
    put(image, "app/lib/libbar.so", make_elf())
    put(image, "app/bin/hello", app(needed=["libfoo.so"], rpath="${ORIGIN}/../lib"))
    assert elf.tree_problems(image, "aarch64", "b") == []
    (image / "app/bin/hello").write_bytes(app(needed=["libfoo.so"], runpath="$ORIGIN/../lib"))
    assert elf.tree_problems(image, "aarch64", "b") == [
        f"app/lib/libfoo.so: needs libbar.so, which is not in the image {LOOKED}"
    ]


def test_library_of_the_wrong_machine_is_skipped_like_the_loader_does(image: Path) -> None:
    put(image, "lib/aarch64-linux-gnu/libz.so.1", make_elf(bits=32, machine=EM_ARM))
    put(image, "usr/lib/libz.so.1", make_elf())
    put(image, "app/bin/hello", app(needed=["libz.so.1"]))
    problems = elf.tree_problems(image, "aarch64", "b")
    # The stray ARM library is itself reported, but the program finds the right one.
    assert problems == [
        "usr/lib/aarch64-linux-gnu/libz.so.1: built for ARM, but board b needs AArch64"
    ]


def test_kernel_modules_and_objects_are_skipped(image: Path) -> None:
    put(image, "lib/modules/6.1/kernel/x.ko", make_elf(machine=EM_X86_64, e_type=ET_REL))
    put(image, "usr/share/x.o", make_elf(machine=EM_X86_64, e_type=ET_REL))
    put(image, "usr/share/notelf", b"\x7fEL")
    assert elf.tree_problems(image, "aarch64", "b") == []


def test_malformed_elf_in_the_tree_is_a_build_error(image: Path) -> None:
    put(image, "app/bin/broken", b"\x7fELF\x02\x01\x01" + bytes(30))
    with pytest.raises(BuildError, match=r"^app/bin/broken: not a valid ELF file"):
        elf.check_tree(image, "aarch64", "b")


def test_needed_closure_includes_libraries_symlinks_and_interpreter(
    image: Path, tmp_path: Path
) -> None:
    put(image, f"{MULTI}/libz.so.1.2.13", make_elf(needed=["libc.so.6"], soname="libz.so.1"))
    link(image, f"{MULTI}/libz.so.1", "libz.so.1.2.13")
    put(image, f"{MULTI}/libunused.so", make_elf())
    outside = put(tmp_path, "build/hello", app(needed=["libz.so.1"]))
    closure = elf.needed_closure(image, [outside])
    assert closure == {
        PurePosixPath(p)
        for p in [
            "lib",
            "usr/lib/ld-linux-aarch64.so.1",
            f"{MULTI}/ld-linux-aarch64.so.1",
            f"{MULTI}/libz.so.1",
            f"{MULTI}/libz.so.1.2.13",
            f"{MULTI}/libc.so.6",
        ]
    }


def test_needed_closure_refuses_a_missing_library(image: Path, tmp_path: Path) -> None:
    outside = put(tmp_path, "build/hello", app(needed=["libnope.so.3"]))
    with pytest.raises(BuildError, match=r"needs libnope\.so\.3, which is not in the image"):
        elf.needed_closure(image, [outside])
    assert elf.needed_closure(image, []) == set()


def test_unknown_architecture(image: Path) -> None:
    with pytest.raises(BuildError, match="unknown architecture 'mips'"):
        elf.check_tree(image, "mips", "b")
