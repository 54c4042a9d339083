"""The provisioning writer on real disk images and loop devices (sfdisk, mtools,
losetup), through the fleet command as a user runs it."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from provision_disks import held_by_another_program, make_disk, only_line, sha
from test_devices import root_disk

from fleet import provision

pytestmark = pytest.mark.integration

FLEET = str(Path(sys.executable).parent / "fleet")
MiB = 1 << 20


def fleet(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FLEET, *map(str, args)], capture_output=True, text=True, stdin=subprocess.DEVNULL,
        timeout=120,
    )


def ssh_key(folder: Path, name: str = "id") -> Path:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{name}@test", "-f",
         folder / name],
        check=True,
    )
    return folder / f"{name}.pub"


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    return make_disk(tmp_path / "disk.img")


def test_writes_every_setting_into_partition_1(disk: Path, tmp_path: Path) -> None:
    pub = ssh_key(tmp_path)
    (tmp_path / "app.conf").write_text("mode=kiosk\n")
    (tmp_path / "ca.pem").write_text("CERT\n")
    result = fleet(
        "provision", disk, "--hostname", "kiosk-01", "--authorized-key", pub,
        "--network", "static:192.0.2.10/24,192.0.2.1,192.0.2.53",
        "--config-file", f"{tmp_path}/app.conf:app.conf",
        "--config-file", f"{tmp_path}/ca.pem:certs/ca.pem",
    )
    assert result.returncode == 0, result.stderr
    assert "provisioned" in result.stdout and "hostname kiosk-01" in result.stdout
    assert provision.listing(disk) == [
        "fleet/authorized_keys", "fleet/bootstate.txt", "fleet/files/app.conf",
        "fleet/files/certs/ca.pem", "fleet/hostname", "fleet/network",
    ]
    assert provision.read(disk, "fleet/hostname") == b"kiosk-01\n"
    assert provision.read(disk, "fleet/authorized_keys") == pub.read_bytes()
    assert provision.read(disk, "fleet/network") == (
        b"mode=static\naddress=192.0.2.10\nprefix=24\nnetmask=255.255.255.0\n"
        b"gateway=192.0.2.1\ndns=192.0.2.53\n"
    )
    assert provision.read(disk, "fleet/files/certs/ca.pem") == b"CERT\n"
    assert provision.read(disk, "fleet/bootstate.txt") == b"fleet_default=A\n"


def test_pull_settings_go_to_partition_1(disk: Path) -> None:
    result = fleet("provision", disk, "--pull-url", "https://cdn.example.com/fleet/",
                   "--pull-group", "lobby", "--pull-interval", "600", "--json")
    assert result.returncode == 0, result.stderr
    assert provision.read(disk, "fleet/pull") == (
        b"url=https://cdn.example.com/fleet\ngroup=lobby\ninterval=600\n"
    )
    assert '"group": "lobby"' in result.stdout


def test_reprovisioning_changes_only_what_is_given(disk: Path, tmp_path: Path) -> None:
    (tmp_path / "a.conf").write_text("a\n")
    (tmp_path / "b.conf").write_text("b\n")
    assert fleet("provision", disk, "--hostname", "one", "--config-file",
                 f"{tmp_path}/a.conf:a.conf").returncode == 0
    result = fleet("provision", disk, "--network", "dhcp", "--config-file",
                   f"{tmp_path}/b.conf:b.conf", "--json")
    assert result.returncode == 0, result.stderr
    assert '"network": "dhcp"' in result.stdout
    assert provision.read(disk, "fleet/hostname") == b"one\n"
    assert provision.read(disk, "fleet/network") == b"mode=dhcp\n"
    # The config folder is replaced whole: a file no longer given is gone.
    assert [n for n in provision.listing(disk) if "/files/" in n] == ["fleet/files/b.conf"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--hostname", "bad_name"], "'bad_name' is not a valid hostname"),
        (["--authorized-key", "{priv}"], "this is a private key"),
        (["--authorized-key", "{junk}"], "not an SSH public key"),
        (["--network", "static:192.0.2.10,192.0.2.1"], "needs its prefix length"),
        (["--network", "static:192.0.2.10/24,10.0.0.1"], "must be another address"),
        (["--config-file", "{conf}:../../etc/shadow"], "may not contain '..'"),
        (["--config-file", "{conf}:/etc/shadow"], "must be a relative path"),
        (["--pull-url", "ftp://192.0.2.1/x"], "an http:// or https:// URL"),
        (["--pull-url", "http://192.0.2.1/$(reboot)"], "an http:// or https:// URL"),
        (["--pull-group", "Lobby"], "--pull-group 'Lobby'"),
        (["--pull-interval", "0"], "--pull-interval: at least 1 second"),
    ],
)
def test_bad_input_is_refused_and_nothing_is_written(
    disk: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    pub = ssh_key(tmp_path)
    (tmp_path / "junk.txt").write_text("hello\n")
    (tmp_path / "app.conf").write_text("x\n")
    names = {"priv": str(pub.with_suffix("")), "junk": str(tmp_path / "junk.txt"),
             "conf": str(tmp_path / "app.conf")}
    before = sha(disk)
    # A good hostname comes first: a refusal of the later value must not write it either.
    result = fleet("provision", disk, "--hostname", "good-one",
                   *[a.format(**names) for a in args])
    assert result.returncode == 2
    assert result.stderr.startswith("fleet: error: ")
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert sha(disk) == before


def test_not_a_disk_is_refused(tmp_path: Path) -> None:
    plain = tmp_path / "plain.img"
    plain.write_bytes(bytes(MiB))
    result = fleet("provision", plain, "--hostname", "x")
    assert result.returncode == 2
    assert "no partition table" in result.stderr


def write_settings(tmp_path: Path) -> Path:
    keys = tmp_path / "keys"
    keys.mkdir()
    ssh_key(keys, "ops")
    ssh_key(keys, "kiosk2")
    (tmp_path / "k2.conf").write_text("screen=2\n")
    settings = tmp_path / "boards.toml"
    settings.write_text(
        "[defaults]\n"
        'authorized_keys = ["keys/ops.pub"]\n'
        'network = "dhcp"\n\n'
        "[[board]]\n"
        'hostname = "kiosk-01"\n'
        'serial = "10000000a1b2c3d4"\n'
        'network = "static:192.0.2.11/24,192.0.2.1"\n\n'
        "[[board]]\n"
        'hostname = "kiosk-02"\n'
        'serial = "10000000ffff0002"\n'
        'authorized_keys = ["keys/kiosk2.pub"]\n'
        'config_files = ["k2.conf:app.conf"]\n'
    )
    return settings


def test_settings_file_by_hostname_and_by_serial(disk: Path, tmp_path: Path) -> None:
    settings = write_settings(tmp_path)
    result = fleet("provision", disk, "--settings", settings, "--hostname", "kiosk-01")
    assert result.returncode == 0, result.stderr
    assert provision.read(disk, "fleet/hostname") == b"kiosk-01\n"
    assert b"address=192.0.2.11" in (provision.read(disk, "fleet/network") or b"")
    assert b"ops@test" in (provision.read(disk, "fleet/authorized_keys") or b"")

    result = fleet("provision", disk, "--settings", settings, "--serial", "10000000ffff0002")
    assert result.returncode == 0, result.stderr
    assert provision.read(disk, "fleet/hostname") == b"kiosk-02\n"
    assert provision.read(disk, "fleet/network") == b"mode=dhcp\n"
    keys = provision.read(disk, "fleet/authorized_keys") or b""
    assert b"kiosk2@test" in keys and b"ops@test" not in keys
    assert provision.read(disk, "fleet/files/app.conf") == b"screen=2\n"

    # A command-line option wins over the file's entry.
    result = fleet("provision", disk, "--settings", settings, "--hostname", "kiosk-01",
                   "--network", "dhcp")
    assert result.returncode == 0, result.stderr
    assert provision.read(disk, "fleet/network") == b"mode=dhcp\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--hostname", "kiosk-99"], "no board with hostname 'kiosk-99'"),
        (["--serial", "nope"], "no board with serial 'nope'"),
        ([], "say which one with --hostname or --serial"),
        (["--hostname", "kiosk-01", "--serial", "10000000ffff0002"], "name different boards"),
    ],
)
def test_settings_file_lookup_errors(
    disk: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    settings = write_settings(tmp_path)
    result = fleet("provision", disk, "--settings", settings, *args)
    assert result.returncode == 2
    assert message in result.stderr


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('[[board]]\nhostname = "a"\n[[board]]\nhostname = "A"\n', "same hostname 'a'"),
        ('[[board]]\nhostname = "a_b"\n', "field 'board[0].hostname'"),
        ('[[board]]\nhostname = "a"\nnetwork = "static:1.2.3.4"\n', "field 'board[0].network'"),
        ('[[board]]\nhostname = "a"\nconfig_files = ["x:../y"]\n',
         "field 'board[0].config_files[0]'"),
        ('[[board]]\nhostname = "a"\nauthorized_keys = ["missing.pub"]\n',
         "field 'board[0].authorized_keys[0]'"),
        ('[[board]]\nhostname = "a"\nhostnmae = "b"\n', "field 'board[0].hostnmae': unknown"),
        ("[defaults]\n", "no [[board]] entries"),
    ],
)
def test_settings_file_errors_name_the_field(
    disk: Path, tmp_path: Path, body: str, message: str
) -> None:
    settings = tmp_path / "boards.toml"
    settings.write_text(body)
    result = fleet("provision", disk, "--settings", settings, "--hostname", "a")
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert str(settings) in result.stderr


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    backing = tmp_path / "card.img"
    with open(backing, "wb") as handle:
        handle.truncate(64 * MiB)
    node = subprocess.run(
        ["losetup", "--find", "--show", str(backing)], check=True, capture_output=True,
        text=True,
    ).stdout.strip()
    yield node, backing
    subprocess.run(["losetup", "-d", node], check=False)


def test_flash_then_provision_a_loop_device(
    disk: Path, tmp_path: Path, loop_device: tuple[str, Path]
) -> None:
    node, backing = loop_device
    pub = ssh_key(tmp_path)
    result = fleet("flash", disk, "--device", node, "--yes", "--hostname", "card-7",
                   "--authorized-key", pub, "--network", "dhcp", "--json")
    assert result.returncode == 0, result.stderr
    assert '"hostname": "card-7"' in result.stdout
    device = Path(node)
    assert provision.read(device, "fleet/hostname") == b"card-7\n"
    assert provision.read(device, "fleet/bootstate.txt") == b"fleet_default=A\n"
    # Written through to the card itself, not only to a cache.
    subprocess.run(["losetup", "-d", node], check=True)
    assert provision.read(backing, "fleet/hostname") == b"card-7\n"


def test_flash_refuses_bad_settings_before_writing(
    disk: Path, loop_device: tuple[str, Path]
) -> None:
    node, backing = loop_device
    result = fleet("flash", disk, "--device", node, "--yes", "--hostname", "no way")
    assert result.returncode == 2
    assert "not a valid hostname" in result.stderr
    assert sha(backing) == hashlib.sha256(bytes(64 * MiB)).hexdigest()


# ---- block devices get fleet flash's safety (issue 10, item 9) ---------------------------


@pytest.fixture
def card(disk: Path, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A loop device holding a flashed card (the fleet-shaped disk)."""
    backing = tmp_path / "card.img"
    backing.write_bytes(disk.read_bytes())
    node = subprocess.run(
        ["losetup", "--find", "--show", str(backing)], check=True, capture_output=True,
        text=True,
    ).stdout.strip()
    yield node, backing
    subprocess.run(["losetup", "-d", node], check=False)


def test_provision_refuses_the_system_drive() -> None:
    root = f"/dev/{root_disk()}"
    result = fleet("provision", root, "--hostname", "kiosk-01")
    assert result.returncode == 6, result.stderr
    line = only_line(result.stderr)
    assert line.startswith(f"fleet: error: {root} is a system drive (holds the root filesystem)")
    assert f"{root} was not changed" in line


def test_provision_refuses_a_device_held_by_another_program(card: tuple[str, Path]) -> None:
    node, _ = card
    before = sha(node)
    with held_by_another_program(node):
        result = fleet("provision", node, "--hostname", "kiosk-01")
    assert result.returncode == 6, result.stderr
    assert only_line(result.stderr) == (
        f"fleet: error: {node} is busy (mounted or held by another program); "
        f"{node} was not changed"
    )
    assert sha(node) == before


def test_provision_refuses_a_mounted_device(tmp_path: Path, loop_device: tuple[str, Path]) -> None:
    node, _ = loop_device
    subprocess.run(["mkfs.ext4", "-q", "-F", node], check=True)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    # Read-only: a read-write ext4 mount goes on writing by itself (its lazy inode table
    # init), which would change the bytes whatever fleet does.
    subprocess.run(["mount", "-o", "ro", node, str(mnt)], check=True)
    try:
        before = sha(node)
        result = fleet("provision", node, "--hostname", "kiosk-01")
        assert result.returncode == 6, result.stderr
        line = only_line(result.stderr)
        assert f"{node} is mounted ({node} on {mnt})" in line and "not changed" in line
        assert sha(node) == before
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def excl_probe(folder: Path, node: str) -> tuple[dict[str, str], Path]:
    """An ``mcopy`` first on PATH that, each time provisioning runs it, tries what an
    automounter would (open the device exclusively), notes whether it got in, then runs
    the real mcopy."""
    shim = folder / "shim"
    shim.mkdir()
    seen = folder / "seen.txt"
    real = shutil.which("mcopy")
    (shim / "mcopy").write_text(
        f"#!{sys.executable}\n"
        "import errno, os, sys\n"
        "try:\n"
        f"    os.close(os.open({node!r}, os.O_RDONLY | os.O_EXCL))\n"
        "    state = 'got in'\n"
        "except OSError as exc:\n"
        "    state = 'busy' if exc.errno == errno.EBUSY else exc.strerror\n"
        f"open({str(seen)!r}, 'a').write(state + '\\n')\n"
        f"os.execv({real!r}, [{real!r}, *sys.argv[1:]])\n"
    )
    (shim / "mcopy").chmod(0o755)
    return {**os.environ, "PATH": f"{shim}:{os.environ['PATH']}"}, seen


@pytest.mark.parametrize("command", ["provision", "flash"])
def test_device_stays_held_until_the_last_settings_write(
    disk: Path, tmp_path: Path, card: tuple[str, Path], command: str
) -> None:
    node, _ = card
    env, seen = excl_probe(tmp_path, node)
    args = ["provision", node] if command == "provision" else ["flash", disk, "-d", node, "--yes"]
    result = subprocess.run(
        [FLEET, *map(str, args), "--hostname", "card-9", "--network", "dhcp"],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120, env=env,
    )
    assert result.returncode == 0, result.stderr
    assert seen.read_text().splitlines() == ["busy", "busy"]  # hostname, network
    assert provision.read(Path(node), "fleet/hostname") == b"card-9\n"


def test_regular_image_file_needs_no_exclusive_hold(disk: Path) -> None:
    """An image file is not a device: another program reading it does not stop fleet."""
    with open(disk, "rb"):
        result = fleet("provision", disk, "--hostname", "kiosk-01")
    assert result.returncode == 0, result.stderr


def test_file_name_with_markup_is_printed_as_it_is(disk: Path) -> None:
    odd = disk.rename(disk.with_name("disk[green]:smile:.img"))  # no '/' in a file name
    result = fleet("provision", odd, "--hostname", "kiosk-01")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"provisioned {odd}: hostname kiosk-01\n"
