"""The folder tree a simulated board runs in: the image's root laid out on this machine.

The host's static busybox (Debian's busybox-static, the package images take) with the
image's applet links, signify-openbsd, dropbear and fleet-tool/fleet-reboot (compiled from
fleet/device for this machine) with their libraries, and fleet's device files at their
image paths, so the board's own agent, forced command and health watcher run unchanged
through chroot. One template is built per lab root; each board's tree hardlinks its
read-only files and copies what a board writes.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
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


def _which(program: str) -> Path:
    found = shutil.which(program, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if found is None:
        raise LabError(f"simulated boards need {program} on this machine (make deps installs it)")
    return Path(found).resolve()


def _libraries(program: Path) -> list[Path]:
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


def build_template(root: Path) -> Path:
    """The tree every simulated board of this lab starts from (built once; a finished
    template holds a ``.complete`` marker, so a build cut short is made again)."""
    if (root / ".complete").exists():
        return root
    if root.exists():
        shutil.rmtree(root)
    work = root.with_name(root.name + ".new")
    shutil.rmtree(work, ignore_errors=True)
    for folder in FOLDERS:
        (work / folder).mkdir(parents=True, exist_ok=True)
    if not BUSYBOX.is_file():
        raise LabError("simulated boards need /bin/busybox (busybox-static; make deps)")
    _copy_in(work, BUSYBOX)
    for applet in APPLETS:
        link = work / ("sbin" if applet in SBIN_APPLETS else "bin") / applet
        if not link.exists():
            link.symlink_to("/bin/busybox")
    programs = [_which(p) for p in HOST_PROGRAMS]
    for program in programs:
        _copy_in(work, program)
    signify = programs[0]
    if signify != Path("/bin/signify-openbsd"):
        (work / "bin/signify-openbsd").unlink(missing_ok=True)
        (work / "bin/signify-openbsd").symlink_to(signify)
    _compile(DEVICE / "fleet-tool.c", work / "usr/sbin/fleet-tool")
    _compile(DEVICE / "fleet-reboot.c", work / "usr/sbin/fleet-reboot")
    for lib in {lib for p in [*programs, work / "usr/sbin/fleet-tool"] for lib in _libraries(p)}:
        _copy_in(work, lib)
    for name, dest in DEVICE_SCRIPTS.items():
        _copy_in(work, DEVICE / name, dest)
    # busybox's reboot would signal an init this tree has not got: the reboot system
    # call itself, which in the board's PID namespace ends the namespace (reboot(2)).
    (work / "sbin/reboot").unlink(missing_ok=True)
    (work / "sbin/reboot").write_text("#!/bin/sh\nexec /usr/sbin/fleet-reboot 0\n")
    (work / "sbin/reboot").chmod(0o755)
    (work / "etc/fleet/rc.shutdown").write_text("#!/bin/sh\nsync\n")
    (work / "etc/fleet/rc.shutdown").chmod(0o755)
    (work / "etc/fleet/sim-init").write_text(SIM_INIT)
    (work / "etc/fleet/sim-init").chmod(0o755)
    (work / "etc/fleet/revoked").write_text("")
    (work / "etc/fleet/threshold").write_text("1\n")
    (work / "etc/passwd").write_text(
        f"root:x:0:0::/root:/bin/sh\napp:x:{APP_UID}:{APP_UID}::/data/app:/bin/false\n"
    )
    (work / "etc/group").write_text(f"root:x:0:\napp:x:{APP_UID}:\n")
    for name, minor in (("null", 3), ("zero", 5), ("urandom", 9), ("random", 8)):
        os.mknod(work / "dev" / name, stat.S_IFCHR | 0o666, os.makedev(1, minor))
    # The agent's console lines: kept in its log on /data; the console itself is the
    # sim-init's output, which the supervisor writes to the board's console log.
    os.symlink("null", work / "dev/console")
    (work / "proc/uptime").write_text("0.00 0.00\n")
    (work / "proc/mounts").write_text("tmpfs /boot/firmware tmpfs ro 0 0\n")
    for cell in ("partition", "tryboot"):
        (work / "proc/device-tree/chosen/bootloader" / cell).write_bytes(bytes(4))
    (work / ".complete").write_text("")
    work.rename(root)
    return root


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
    (tree / "etc/fleet/board.env").write_bytes(
        shell_env(
            {
                "FLEET_BOARD": board,
                "FLEET_BOOT_METHOD": "uboot-ab",
                "FLEET_FIRMWARE_DEV": "/dev/vda1",
                "FLEET_DATA_DEV": "/dev/vda7",
                "FLEET_SHELL_KEYS": "no",
                "FLEET_WIFI_IF": "",
            }
        )
    )
    (tree / "etc/fleet/sim.env").write_bytes(shell_env({"SIM_PORT": str(port)}))
    (tree / "proc/sys/kernel/hostname").write_text(hostname + "\n")
    ssh_dir = tree / "root/.ssh"
    ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    force = (
        'command="/etc/fleet/agent-ssh",no-port-forwarding,no-agent-forwarding,'
        "no-X11-forwarding,no-pty"
    )
    (ssh_dir / "authorized_keys").write_text(f"{force} {authorized}\n")
    (ssh_dir / "authorized_keys").chmod(0o600)
    for rel in ("data/ssh", "data/fleet", "data/app"):
        (tree / rel).mkdir(parents=True, exist_ok=True)
    os.chown(tree / "data/app", APP_UID, APP_UID)


# What rc.sysinit does that the agent and the health watcher need, then the SSH server
# and the watcher; then it stays, as the namespace's init (its end is the board's end).
SIM_INIT = r"""#!/bin/sh
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH
. /etc/fleet/sim.env
mkdir -p /run/fleet /run/var/log /data/fleet /tmp
/etc/fleet/agent boot
# The sim's app: one that fails exits at once (run-app counts its exits), so the
# health watcher judges it on its first check; one that hangs is judged at the deadline.
read -r health < /etc/fleet/sim-health
[ "$health" = unhealthy ] && echo "0 1" >> /run/fleet/app-exits
read -r up _ < /proc/uptime
echo "fleet: [$up] boot: agent"
/usr/sbin/dropbear -F -E -s -p "127.0.0.1:$SIM_PORT" -W 1048576 \
    -r /data/ssh/dropbear_ed25519_host_key -P /run/dropbear.pid \
    2>> /run/var/log/dropbear.log &
/etc/fleet/health-watch > /dev/null 2>&1 &
echo "fleet: system up"
while :; do
    sleep 3600 &
    wait $!
done
"""
