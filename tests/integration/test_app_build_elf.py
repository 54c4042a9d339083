"""The image ELF checks on real programs from the real compilers: a host binary or a
missing library is refused with a message naming the binary; a correct tree passes."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path, PurePosixPath

import pytest

from fleet import REPO_ROOT
from fleet.errors import BuildError
from fleet.image import elf
from fleet.image.app import build_app
from fleet.project import load_project

pytestmark = pytest.mark.integration

SYSROOT = Path("/usr/aarch64-linux-gnu")
BOARD = "qemu-virt-arm64"
LOOKED = "(looked in /lib/aarch64-linux-gnu, /usr/lib/aarch64-linux-gnu, /lib, /usr/lib)"


def cc(*args: str | Path, compiler: str = "aarch64-linux-gnu-gcc") -> None:
    subprocess.run([compiler, *map(str, args)], check=True, capture_output=True)


@pytest.fixture()
def image(tmp_path: Path) -> Path:
    """An aarch64 root holding the C library the cross toolchain links against, copied
    with needed_closure the way the image build copies libraries from Debian packages."""
    root = tmp_path / "root"
    probe = tmp_path / "probe"
    (tmp_path / "probe.c").write_text("int main(void) { return 0; }\n")
    cc("-o", probe, tmp_path / "probe.c")
    for rel in sorted(elf.needed_closure(SYSROOT, [probe])):
        source = SYSROOT / rel
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            target.symlink_to(source.readlink())
        else:
            shutil.copy2(source, target)
    return root


def install(root: Path, program: Path, where: str) -> None:
    target = root / where
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(program, target)


def test_closure_of_a_cross_built_program(tmp_path: Path, image: Path) -> None:
    assert {str(p) for p in elf.needed_closure(SYSROOT, [tmp_path / "probe"])} == {
        "lib/ld-linux-aarch64.so.1",
        "lib/libc.so.6",
    }
    libc = elf.read(image / "lib/libc.so.6")
    assert libc.soname == "libc.so.6"
    assert "ld-linux-aarch64.so.1" in libc.needed


def test_cross_built_example_passes(tmp_path: Path, image: Path) -> None:
    program = build_app(load_project(REPO_ROOT / "examples/hello-c"), "aarch64", tmp_path / "w")
    install(image, program, "app/bin/hello-c")
    elf.check_tree(image, "aarch64", BOARD)


def test_host_linked_binary_is_refused(tmp_path: Path, image: Path) -> None:
    project = load_project(REPO_ROOT / "examples/hello-c")
    program = build_app(project, "aarch64", tmp_path / "w", host=True)
    install(image, program, "app/bin/hello-c")
    host_machine = elf.describe(elf.read(program))
    with pytest.raises(BuildError) as info:
        elf.check_tree(image, "aarch64", BOARD)
    assert str(info.value) == (
        f"app/bin/hello-c: built for {host_machine}, but board {BOARD} needs AArch64"
    )
    assert info.value.exit_code == 4


def test_armhf_binary_on_an_aarch64_board_is_refused(tmp_path: Path, image: Path) -> None:
    project = load_project(REPO_ROOT / "examples/hello-c")
    install(image, build_app(project, "armhf", tmp_path / "w"), "app/bin/hello-c")
    with pytest.raises(BuildError, match=f"^app/bin/hello-c: built for ARM, but board {BOARD}"):
        elf.check_tree(image, "aarch64", BOARD)


def test_missing_library_is_named_then_found_through_origin(tmp_path: Path, image: Path) -> None:
    (tmp_path / "foo.c").write_text("int foo(void) { return 42; }\n")
    (tmp_path / "main.c").write_text("int foo(void);\nint main(void) { return foo(); }\n")
    lib = tmp_path / "libfoo.so.1"
    cc("-shared", "-fPIC", "-Wl,-soname,libfoo.so.1", "-o", lib, tmp_path / "foo.c")
    (tmp_path / "libfoo.so").symlink_to("libfoo.so.1")
    program = tmp_path / "uses-foo"
    cc("-o", program, tmp_path / "main.c", f"-L{tmp_path}", "-lfoo", "-Wl,-rpath,$ORIGIN/../lib")
    assert elf.read(program).runpath == ("$ORIGIN/../lib",)

    install(image, program, "app/bin/uses-foo")
    with pytest.raises(BuildError) as info:
        elf.check_tree(image, "aarch64", BOARD)
    assert str(info.value) == (
        "app/bin/uses-foo: needs libfoo.so.1, which is not in the image "
        "(looked in /app/lib, /lib/aarch64-linux-gnu, /usr/lib/aarch64-linux-gnu, /lib, /usr/lib)"
    )

    install(image, lib, "app/lib/libfoo.so.1")
    elf.check_tree(image, "aarch64", BOARD)
    closure = elf.needed_closure(image, [image / "app/bin/uses-foo"])
    assert PurePosixPath("app/lib/libfoo.so.1") in closure


def test_modinfo_section_of_a_real_object(tmp_path: Path) -> None:
    (tmp_path / "mod.c").write_text(
        'static const char info[] __attribute__((section(".modinfo"), used)) =\n'
        '    "license=GPL\\0name=demo";\n'
    )
    cc("-c", "-o", tmp_path / "mod.ko", tmp_path / "mod.c")
    assert elf.section_bytes(tmp_path / "mod.ko", ".modinfo") == b"license=GPL\0name=demo\0"
    assert elf.section_bytes((tmp_path / "mod.ko").read_bytes(), ".bss") == b""
    assert elf.section_bytes(tmp_path / "mod.ko", ".nothing") is None
