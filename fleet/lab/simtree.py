"""The folder tree a simulated board runs in: the image's root laid out on this machine.

The host's static busybox (Debian's busybox-static, the package images take) with the
image's applet links, signify-openbsd, dropbear and fleet-tool/fleet-reboot (compiled from
fleet/device for this machine) with their libraries, and fleet's device files at their
image paths, so the board's own agent, forced command and health watcher run unchanged
through chroot. One template is built per lab root; each board's tree hardlinks its
read-only files and copies what a board writes.

tests/agent_tree.py lays out its one-command trees with the same ``lay_out`` and gives
them partitions with the same ``attach_loop`` and ``mount_firmware``.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import stat
import subprocess
from collections.abc import Iterable
from pathlib import Path

from fleet.errors import LabError
from fleet.image.rootfs import APP_UID, APPLETS, SBIN_APPLETS, shell_env
from fleet.run import run

DEVICE = Path(__file__).resolve().parent.parent / "device"
BUSYBOX = Path("/bin/busybox")
HOST_PROGRAMS = ("signify-openbsd", "dropbear", "dropbearkey")
DEVICE_SCRIPTS = {
    "agent": "etc/fleet/agent",
    "agent-ssh": "etc/fleet/agent-ssh",
    "verify-release.sh": "etc/fleet/verify-release",
    "health-watch": "etc/fleet/health-watch",
    "pull": "etc/fleet/pull",
}
FOLDERS = (
    "bin",
    "sbin",
    "usr/bin",
    "usr/sbin",
    "etc/fleet/keys",
    "run",
    "tmp",
    "data",
    "dev",
    "root",
    "boot/firmware",
    "proc/sys/kernel/random",
    "proc/device-tree/chosen/bootloader",
)
# What a board writes or the sim rewrites per board or per boot: copied, never linked.
MUTABLE = ("etc/fleet/app.env", "etc/fleet/board.env", "etc/fleet/sim.env", "etc/passwd")
# The forced command every authorised key gets, as rc.sysinit writes it.
FORCED = (
    'command="/etc/fleet/agent-ssh",no-port-forwarding,no-agent-forwarding,no-X11-forwarding,no-pty'
)


def _which(program: str) -> Path:
    found = shutil.which(program, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if found is None:
        raise LabError(f"simulated boards need {program} on this machine (make deps installs it)")
    return Path(found).resolve()


def _libraries(program: Path) -> list[Path]:
    # ldd only reads the program's dynamic section here; a failure (a static program)
    # simply lists nothing, so it is not one of run()'s errors.
    out = subprocess.run(["ldd", str(program)], capture_output=True, text=True, check=False).stdout
    return [
        Path(word)
        for line in out.splitlines()
        for word in line.split()
        if word.startswith("/") and Path(word).exists()
    ]


def _copy_in(root: Path, source: Path, dest: str | None = None, mode: int = 0o755) -> None:
    target = root / (dest or str(source).lstrip("/"))
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source.resolve(), target)
    os.chmod(target, mode)


def _compile(source: Path, out: Path) -> None:
    run(["gcc", "-O2", "-Wall", "-Werror", "-o", str(out), str(source)])


def _script(path: Path, text: str) -> None:
    path.unlink(missing_ok=True)
    path.write_text(text)
    path.chmod(0o755)


def lay_out(root: Path) -> None:
    """The image's root as the board's programs see it: busybox and its applet links, the
    host programs with their libraries, fleet-tool and fleet-reboot, the device scripts,
    the users, /dev's nodes and the few /proc files the agent reads (a folder, not procfs)."""
    if not BUSYBOX.is_file():
        raise LabError("simulated boards need /bin/busybox (busybox-static; make deps)")
    for folder in FOLDERS:
        (root / folder).mkdir(parents=True, exist_ok=True)
    _copy_in(root, BUSYBOX)
    for applet in APPLETS:
        link = root / ("sbin" if applet in SBIN_APPLETS else "bin") / applet
        if not link.exists():
            link.symlink_to("/bin/busybox")
    programs = [_which(p) for p in HOST_PROGRAMS]
    for program in programs:
        _copy_in(root, program)
    signify = programs[0]
    if signify != Path("/bin/signify-openbsd"):
        (root / "bin/signify-openbsd").unlink(missing_ok=True)
        (root / "bin/signify-openbsd").symlink_to(signify)
    _compile(DEVICE / "fleet-tool.c", root / "usr/sbin/fleet-tool")
    _compile(DEVICE / "fleet-reboot.c", root / "usr/sbin/fleet-reboot")
    for lib in {lib for p in [*programs, root / "usr/sbin/fleet-tool"] for lib in _libraries(p)}:
        _copy_in(root, lib)
    for name, dest in DEVICE_SCRIPTS.items():
        _copy_in(root, DEVICE / name, dest)
    # busybox's reboot would signal an init this tree has not got: the reboot system
    # call itself, which in the board's PID namespace ends the namespace (reboot(2)).
    _script(root / "sbin/reboot", "#!/bin/sh\nexec /usr/sbin/fleet-reboot 0\n")
    _script(root / "etc/fleet/rc.shutdown", "#!/bin/sh\nsync\n")
    (root / "etc/fleet/revoked").write_text("")
    (root / "etc/fleet/threshold").write_text("1\n")
    (root / "etc/passwd").write_text(
        f"root:x:0:0::/root:/bin/sh\napp:x:{APP_UID}:{APP_UID}::/data/app:/bin/false\n"
    )
    (root / "etc/group").write_text(f"root:x:0:\napp:x:{APP_UID}:\n")
    for name, minor in (("null", 3), ("zero", 5), ("urandom", 9), ("random", 8)):
        os.mknod(root / "dev" / name, stat.S_IFCHR | 0o666, os.makedev(1, minor))
    (root / "proc/uptime").write_text("0.00 0.00\n")
    (root / "proc/mounts").write_text("tmpfs /boot/firmware tmpfs ro 0 0\n")
    for cell in ("partition", "tryboot"):
        (root / "proc/device-tree/chosen/bootloader" / cell).write_bytes(bytes(4))


def write_board_env(
    tree: Path, board: str, boot_method: str = "uboot-ab", disk: str = "/dev/vda"
) -> None:
    """board.env as the image carries it, for a disk whose partitions are DISK1..7."""
    (tree / "etc/fleet/board.env").write_bytes(
        shell_env(
            {
                "FLEET_BOARD": board,
                "FLEET_BOOT_METHOD": boot_method,
                "FLEET_FIRMWARE_DEV": f"{disk}1",
                "FLEET_DATA_DEV": f"{disk}7",
                "FLEET_SHELL_KEYS": "no",
                "FLEET_WIFI_IF": "",
            }
        )
    )


def attach_loop(backing: Path, node: Path) -> str:
    """A loop device over BACKING, reachable in the tree as the block device NODE."""
    loop = run(["losetup", "--find", "--show", str(backing)]).stdout.decode().strip()
    try:
        node.unlink(missing_ok=True)
        os.mknod(node, stat.S_IFBLK | 0o600, os.stat(loop).st_rdev)
    except OSError:
        run(["losetup", "-d", loop], check=False)
        raise
    return loop


def mount_firmware(path: Path, mib: int, *, read_only: bool = True) -> None:
    """Partition 1 as a tmpfs (this host's kernel has no vfat): the agent remounts it
    read-write for each boot state write, as it does the board's FAT partition."""
    ro = "ro," if read_only else ""
    run(["mount", "-t", "tmpfs", "-o", f"{ro}size={mib}m,mode=0755", "tmpfs", str(path)])


def release(loops: Iterable[str], firmware: Path | None) -> None:
    """Detach the loops and unmount partition 1; whatever is already gone is fine."""
    for loop in loops:
        run(["losetup", "-d", loop], check=False)
    if firmware is not None and os.path.ismount(firmware):
        run(["umount", str(firmware)], check=False)


def build_template(root: Path) -> Path:
    """The tree every simulated board of this lab starts from (built once; a finished
    template holds a ``.complete`` marker, so a build cut short is made again)."""
    if (root / ".complete").exists():
        return root
    # Two `lab up --sim` of one lab root at once: one builds, the other waits for it.
    with open(root.with_name(root.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / ".complete").exists():
            _build_template(root)
    return root


def _build_template(root: Path) -> None:
    if root.exists():
        shutil.rmtree(root)
    work = root.with_name(root.name + ".new")
    shutil.rmtree(work, ignore_errors=True)
    lay_out(work)
    _script(work / "etc/fleet/sim-init", SIM_INIT)
    # The target the board's pty is bind-mounted on at each boot (fleet.lab.simboot): the
    # agent's and health watcher's `say` lines reach the board's console log through it.
    (work / "dev/console").write_text("")
    (work / ".complete").write_text("")
    work.rename(root)


def board_tree(
    template: Path,
    tree: Path,
    *,
    board: str,
    hostname: str,
    port: int,
    pubkeys: list[Path],
    authorized: str,
) -> None:
    """A board's own tree: links to the template's files, its own copies of MUTABLE, its
    keys and its settings."""
    run(["cp", "-al", str(template), str(tree)])
    (tree / ".complete").unlink(missing_ok=True)
    for rel in MUTABLE:
        path = tree / rel
        if path.exists():
            data = path.read_bytes()
            path.unlink()
            path.write_bytes(data)
    for pub in pubkeys:
        shutil.copyfile(pub, tree / "etc/fleet/keys" / pub.name)
    write_board_env(tree, board)
    (tree / "etc/fleet/sim.env").write_bytes(shell_env({"SIM_PORT": str(port)}))
    (tree / "proc/sys/kernel/hostname").write_text(hostname + "\n")
    ssh_dir = tree / "root/.ssh"
    ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    (ssh_dir / "authorized_keys").write_text(f"{FORCED} {authorized}\n")
    (ssh_dir / "authorized_keys").chmod(0o600)
    for rel in ("data/ssh", "data/fleet", "data/app"):
        (tree / rel).mkdir(parents=True, exist_ok=True)
    (tree / "data/ssh").chmod(0o700)
    os.chown(tree / "data/app", APP_UID, APP_UID)


# The board's init (PID 1 of its namespace, chrooted): what rc.sysinit does that the
# agent, the forced command and the health watcher rely on, then what inittab starts (the
# SSH server, the health watcher); then it stays, as the namespace's init, whose end is
# the board's end. The app is a stand-in (docs/lab.md): /etc/fleet/sim-health, written by
# the supervisor at each boot, says whether its health check passes.
SIM_INIT = r"""#!/bin/sh
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH
. /etc/fleet/board.env
. /etc/fleet/sim.env
say() { echo "fleet: $*" > /dev/console; }
stamp() { read -r up _ < /proc/uptime; echo "fleet: [$up] boot: $1" > /dev/console; }
stamp init
mkdir -p /run/var/log /run/var/run /run/fleet /tmp
slot="" trial=0
read -r cmdline < /proc/cmdline
for arg in $cmdline; do
    case "$arg" in
        fleet.slot=*) slot="${arg#fleet.slot=}" ;;
        fleet.trial=1) trial=1 ;;
    esac
done
echo "$slot" > /run/fleet/slot
echo ok > /run/fleet/data-state
hostkey=/data/ssh/dropbear_ed25519_host_key
[ -s "$hostkey.pub" ] && read -r type blob _ < "$hostkey.pub" && say "host key $type $blob"
read -r name < /proc/sys/kernel/hostname
# An app that fails exits at once (run-app counts its exits), so the health watcher
# judges it on its first check; one that hangs is judged at the deadline.
read -r health < /etc/fleet/sim-health
if [ "$health" = unhealthy ]; then echo "0 1" >> /run/fleet/app-exits; fi
# As rc.sysinit: only a trial boot starts the agent for it.
if [ "$trial" = 1 ]; then
    /etc/fleet/agent boot
else
    echo no > /run/fleet/trial-boot
fi
stamp ssh
# Respawned, as inittab respawns run-sshd: a port some other program took while the
# board was down is tried again.
(
    while :; do
        /usr/sbin/dropbear -F -E -s -p "127.0.0.1:$SIM_PORT" -W 1048576 -r "$hostkey" \
            -P /run/dropbear.pid < /dev/null 2>> /run/var/log/dropbear.log
        sleep 1
    done
) &
/etc/fleet/health-watch < /dev/null > /dev/null 2>&1 &
/etc/fleet/pull loop < /dev/null > /dev/null 2>&1 &
. /etc/fleet/app.env
say "system up: slot $slot, $FLEET_APP_NAME $FLEET_APP_VERSION (release $FLEET_RELEASE), host $name"
while :; do
    sleep 3600 &
    wait $!
done
"""
