"""``fleet lab``: virtual boards on QEMU — flash a disk image, boot, reach SSH and the
app through loopback ports, watch the console, cut and restore power."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from fleet import lab
from fleet.cli import provision as provision_opts
from fleet.cli.output import JSON_HELP, err, note, out, print_json
from fleet.errors import LabError, UsageError
from fleet.lab.bootchart import format_table
from fleet.lab.console import attach, print_log
from fleet.lab.state import Board
from fleet.run import run

app = typer.Typer(
    help=(
        "Virtual boards on QEMU. `fleet lab up --board qemu-virt-arm64 --disk out/disk.img` "
        "copies the image, writes the board's hostname and the lab's SSH key into its first "
        "partition, boots it and returns when it is up; then `fleet lab ssh NAME`, "
        "`fleet lab console NAME`, `fleet lab power NAME cycle`, `fleet lab down NAME`. "
        "State lives in $FLEET_LAB_DIR (default ~/.local/state/fleet/lab)."
    ),
    no_args_is_help=True,
)


def _info(board: Board) -> dict[str, Any]:
    pid = board.running_pid()
    return {
        "name": board.name,
        "kind": board.kind,
        "board": board.profile,
        "state": "running" if pid is not None else "stopped",
        "pid": pid,
        "ssh_port": board.ssh_port,
        "app_port": board.app_port,
        "app_guest_port": board.app_guest_port,
        "disk": str(board.disk),
        "console_log": str(board.console_log),
        "console_socket": str(board.console_socket),
        "state_dir": str(board.state_dir),
        "key": str(board.key_path),
        "shell_key": str(board.shell_key_path),
        "known_hosts": str(board.known_hosts_path),
    }


@contextlib.contextmanager
def _live_status() -> Iterator[Callable[[str], None] | None]:
    """A status line that follows the boot on a terminal; nothing when stderr is a file."""
    if not err.is_terminal:
        yield None
        return
    with err.rich.status("booting") as live:
        yield lambda text: live.update(escape(text))


def _print_board(board: Board) -> None:
    info = _info(board)
    out.print(
        f"{info['name']}: {info['state']} ({info['board']}), "
        f"ssh 127.0.0.1:{info['ssh_port']}, app 127.0.0.1:{info['app_port']}, "
        f"console {info['console_log']}"
    )


@app.command("up")
def up(
    board: Annotated[
        str | None, typer.Option("--board", help="Board profile, e.g. qemu-virt-arm64.")
    ] = None,
    disk_image: Annotated[
        Path | None, typer.Option("--disk", help="Disk image (or block device) to boot.")
    ] = None,
    sim: Annotated[
        bool,
        typer.Option(
            "--sim",
            help="Simulated boards instead of QEMU: the board's agent and SSH server in a "
            "chroot, hundreds per machine (docs/lab.md). Needs --trust; with --count.",
        ),
    ] = False,
    count: Annotated[
        int, typer.Option("--count", min=1, max=2000, help="With --sim: how many boards.")
    ] = 1,
    trust: Annotated[
        Path | None,
        typer.Option(
            "--trust", help="With --sim: the release keys the boards pin (.pub or folder)."
        ),
    ] = None,
    release: Annotated[
        Path | None,
        typer.Option("--release", help="With --sim: the release slot A holds (default: none)."),
    ] = None,
    boot_delay: Annotated[
        float,
        typer.Option("--boot-delay", min=0, help="With --sim: seconds a reboot takes."),
    ] = 0.3,
    health_timeout: Annotated[
        int,
        typer.Option(
            "--health-timeout",
            min=1,
            help="With --sim: the trial's health deadline in seconds (FLEET_HEALTH_TIMEOUT).",
        ),
    ] = 10,
    name: str | None = typer.Option(
        None, "--name", help="Board name (a-z, 0-9, '-'); default: the profile name."
    ),
    in_place: bool = typer.Option(
        False, "--in-place", help="Boot the image itself (e.g. a loop device) instead of a copy."
    ),
    timeout: float = typer.Option(120.0, "--timeout", help="Seconds to wait for the board."),
    app_port: int = typer.Option(
        lab.DEFAULT_APP_PORT, "--app-port", help="The app's HTTP port on the board."
    ),
    up_line: str = typer.Option(
        lab.UP_LINE, "--up-line", help="Console line that says the board is up."
    ),
    no_ssh_wait: bool = typer.Option(
        False, "--no-ssh-wait", help="Up when the console line shows; do not wait for SSH."
    ),
    down_on_failure: bool = typer.Option(
        False, "--down-on-failure", help="Stop the board if it does not come up (default: keep it)."
    ),
    storage_faults: Path | None = typer.Option(
        None,
        "--storage-faults",
        help="A QEMU blkdebug config ([inject-error] sections: event, errno, sector, once) "
        "for the board's disk: its card fails the reads or writes it names, at every boot.",
    ),
    hostname: provision_opts.HostnameOpt = None,
    authorized_key: provision_opts.KeyOpt = None,
    network: provision_opts.NetworkOpt = None,
    config_file: provision_opts.ConfigFileOpt = None,
    settings_file: provision_opts.SettingsOpt = None,
    wifi_ssid: provision_opts.WifiSsidOpt = None,
    wifi_psk_file: provision_opts.WifiPskOpt = None,
    wifi_country: provision_opts.WifiCountryOpt = None,
    pull_url: provision_opts.PullUrlOpt = None,
    pull_group: provision_opts.PullGroupOpt = None,
    pull_interval: provision_opts.PullIntervalOpt = None,
    pull_jitter: provision_opts.PullJitterOpt = None,
    pull_key: Annotated[
        list[Path] | None,
        typer.Option(
            "--pull-key",
            help="With --sim and --pull-url: a timestamp public key the boards pin (a real "
            "image pins its fleet.toml [pull] timestamp_keys).",
        ),
    ] = None,
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Flash DISK onto a new virtual board and boot it; return when it is up.

    The board's hostname is --hostname (default: its name); the lab's SSH key is always
    allowed in, beside any --authorized-key (see docs/provisioning.md).

    Up means: the console printed the up line ('fleet: system up') and the forwarded SSH
    port answers with an SSH banner. The board's SSH host key is then pinned in the lab's
    known_hosts. On timeout the board keeps running for inspection.

    With --sim --count N --trust KEYS: N simulated boards NAME-1..N (default sim-1..),
    each the board's own agent behind a real SSH server on this machine, for rollouts at
    scale (docs/lab.md, "Simulated boards"); then fleet lab inventory.
    """
    if sim:
        if trust is None:
            raise UsageError("--sim needs --trust KEYS: the release keys the boards pin")
        from fleet.lab import sim as simlab
        from fleet.provision.values import parse_pull

        pull = parse_pull(pull_url, pull_group, pull_interval, pull_jitter)
        if pull is not None and not pull_key:
            raise UsageError("--sim with --pull-url needs --pull-key (the timestamp public key)")
        made = simlab.up(
            count,
            trust,
            prefix=name or "sim",
            profile=board or "qemu-virt-arm64",
            release=release,
            boot_delay=boot_delay,
            health_timeout=health_timeout,
            timeout=timeout,
            pull=pull,
            pull_keys=tuple(pull_key or ()),
        )
        if json_out:
            print_json([_info(b) for b in made])
        else:
            for made_board in made:
                _print_board(made_board)
        return
    if board is None or disk_image is None:
        raise UsageError("give --board PROFILE and --disk IMAGE (or --sim --count N --trust KEYS)")
    # Checked before the disk is copied, so a bad value leaves no board behind.
    settings = provision_opts.requested(
        hostname,
        authorized_key,
        network,
        config_file,
        settings_file,
        wifi_ssid=wifi_ssid,
        wifi_psk_file=wifi_psk_file,
        wifi_country=wifi_country,
        pull_url=pull_url,
        pull_group=pull_group,
        pull_interval=pull_interval,
        pull_jitter=pull_jitter,
    )
    if in_place:  # the device itself gets the settings: fleet flash's refusals apply
        provision_opts.check_device(disk_image)
    with _live_status() as status:
        result = lab.up(
            board,
            disk_image,
            name,
            in_place=in_place,
            timeout=timeout,
            app_port=app_port,
            up_line=up_line,
            wait_ssh=not no_ssh_wait,
            down_on_failure=down_on_failure,
            note=note,
            status=status,
            settings=settings,
            storage_faults=storage_faults,
        )
    if json_out:
        print_json(_info(result))
    else:
        _print_board(result)


@app.command("list")
def list_(json_out: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """List the lab's boards: state, pid, forwarded ports, disk and console log."""
    boards = [_info(b) for b in lab.list_boards()]
    if json_out:
        print_json(boards)
        return
    if not boards:
        note("no lab boards (start one with fleet lab up)")
        return
    out.print(
        f"{'NAME':<16} {'KIND':<5} {'BOARD':<16} {'STATE':<8} {'PID':>7} {'SSH':>6} {'APP':>6}"
        "  DISK"
    )
    for b in boards:
        pid = "-" if b["pid"] is None else str(b["pid"])
        out.print(
            f"{b['name']:<16} {b['kind']:<5} {b['board']:<16} {b['state']:<8} {pid:>7} "
            f"{b['ssh_port']:>6} {b['app_port']:>6}  {b['disk']}"
        )


@app.command("ssh", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def ssh_(
    name: str = typer.Argument(..., help="Board name."),
    command: Annotated[list[str] | None, typer.Argument(help="Command to run (after --).")] = None,
) -> None:
    """Open a shell on the board as root, or run `-- CMD ...` and exit with its status.

    Uses the lab's shell key and known_hosts with strict host key checking. Only a
    development image (fleet build --dev) lets the shell key in; on a production image
    the lab's keys may run only the agent's verbs (fleet status, fleet update).
    """
    board = lab.get(name)
    if board.running_pid() is None:
        raise LabError(f"lab board {name!r} is not running (start it: fleet lab power {name} on)")
    argv: list[str] = [
        "ssh",
        "-i",
        str(board.shell_key_path),
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        f"UserKnownHostsFile={board.known_hosts_path}",
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "PasswordAuthentication=no",
        "-o",
        "ConnectTimeout=10",
        "-p",
        str(board.ssh_port),
        "root@127.0.0.1",
    ]
    if command:
        argv += ["--", *command]
    proc = run(argv, capture=False, check=False)
    raise typer.Exit(proc.returncode)


@app.command("console")
def console(
    name: str = typer.Argument(..., help="Board name."),
    log: bool = typer.Option(False, "--log", help="Print the console log instead of attaching."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Print the log and follow it."),
) -> None:
    """Attach this terminal to the board's serial console (detach with Ctrl-]).

    With --log print everything the console said since `up`; with --follow keep printing.
    Boards with several UARTs share one console: Ctrl-a c switches the one you type to.
    """
    board = lab.get(name)
    if board.kind == "sim" and not log:
        # A simulated board's console is output only: attaching is following its log.
        note(f"{name} is a simulated board: following its console log (Ctrl-C ends)")
        follow = True
    if log or follow:
        with contextlib.suppress(KeyboardInterrupt):
            print_log(board.console_log, follow)
        return
    if board.running_pid() is None:
        raise LabError(f"lab board {name!r} is not running; see its log with --log")
    note(f"attached to {name}'s console; detach with Ctrl-]")
    attach(board.console_socket)
    sys.stdout.write("\n")


@app.command("boot-time")
def boot_time(
    name: str = typer.Argument(..., help="Board name."),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Where the board's last boot spent its time, phase by phase: machine start,
    bootloader, kernel start, initramfs, root switched, init, then network, SSH and the
    app (side by side from init) and healthy. From the lab's host timestamps on the
    console and the board's own uptime stamps (docs/lab.md)."""
    chart = lab.boot_chart(lab.get(name))
    if json_out:
        print_json(chart.to_json())
    else:
        sys.stdout.write(format_table(chart) + "\n")


@app.command("down")
def down(
    name: Annotated[str | None, typer.Argument(metavar="NAME", help="Board name.")] = None,
    rm: bool = typer.Option(
        False, "--rm", "--remove", help="Also delete its state folder (disk copy, logs)."
    ),
    all_boards: bool = typer.Option(False, "--all", help="Every board of the lab."),
) -> None:
    """Shut the board down (QEMU stops cleanly; a simulated board stops and its loop
    devices and partition 1 are freed); keep its state unless --rm."""
    if all_boards == (name is not None):
        raise UsageError("give a board name or --all")
    done = lab.down_all(remove=rm) if name is None else [(name, lab.down(name, remove=rm))]
    for board_name, was_running in done:
        state = "stopped" if was_running else "was not running"
        note(f"{board_name}: {state}{'; state removed' if rm else ''}")


@app.command("power")
def power(
    name: str = typer.Argument(..., help="Board name."),
    action: str = typer.Argument(..., help="off (power cut), on, or cycle (off then on)."),
    no_wait: bool = typer.Option(False, "--no-wait", help="Do not wait for the board to be up."),
    timeout: float = typer.Option(120.0, "--timeout", help="Seconds to wait for the board."),
    bootdelay: int = typer.Option(
        0,
        "--bootdelay",
        help="Seconds U-Boot waits for a key before it boots (default 0: it boots at once).",
    ),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Cut or restore the board's power: off kills QEMU at once (a real power cut);
    on boots it again on the same disk and ports and waits until it is up. To stop in
    U-Boot: `power NAME on --no-wait --bootdelay 5`, then `console NAME` and a key."""
    with _live_status() as status:
        board = lab.power(
            name,
            action,
            wait=not no_wait,
            timeout=timeout,
            note=note,
            status=status,
            bootdelay=bootdelay,
        )
    if json_out:
        print_json(_info(board))
    else:
        _print_board(board)


@app.command("sim-fault")
def sim_fault(
    name: str = typer.Argument(..., help="A simulated board's name."),
    fault: str = typer.Argument(
        ...,
        help="unhealthy (the app's health check fails from the next boot on), hang (it never "
        "answers), or none.",
    ),
) -> None:
    """Make a simulated board's app fail its health check, whatever release it runs."""
    from fleet.lab import sim as simlab

    board = lab.get(name)
    if board.kind != "sim":
        raise UsageError(f"{name} is not a simulated board (fleet lab up --sim)")
    simlab.set_fault(board, fault)
    note(f"{name}: fault {fault} (from its next boot)")


@app.command("inventory")
def inventory(
    out_file: Path | None = typer.Option(None, "--out", help="Write here instead of stdout."),
    group: list[str] = typer.Option(
        [], "--group", help="Groups every board is put in (repeatable; default: its kind)."
    ),
    prefix: str | None = typer.Option(
        None, "--prefix", help="Only boards named PREFIX-N (those of one lab up --sim)."
    ),
) -> None:
    """An inventory (fleet's TOML) of every running lab board, simulated or QEMU, for
    fleet rollout and fleet status --inventory. Without --group each board is in the
    group of its kind: sim or qemu."""
    from fleet import atomic

    text = lab.inventory(group, prefix)
    if out_file is None:
        sys.stdout.write(text)
    else:
        atomic.write_text(out_file, text)
        note(f"wrote {out_file}")


@app.command("netboot")
def netboot(
    release: Annotated[
        Path, typer.Argument(help="Release folder to serve (fleet build's out/release).")
    ],
    trust: Annotated[
        Path, typer.Option("--trust", help="What fleet serve trusts (.pub or trust folder).")
    ],
    board: Annotated[
        str, typer.Option("--board", help="Virtual board profile.")
    ] = "qemu-virt-arm64",
    disk_image: Annotated[
        Path | None,
        typer.Option("--disk", help="A disk image for the board (a copy): shown never written."),
    ] = None,
    timeout: Annotated[
        float, typer.Option("--timeout", min=10, help="Seconds from power-on to a healthy app.")
    ] = 240,
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Netboot a virtual board from `fleet serve` and check the app comes up.

    A network namespace with a tap device (192.0.2.0/24) holds fleet serve and the board:
    its U-Boot fetches boot.scr.uimg, the kernel and the netboot initramfs, which fetches
    the rootfs and the signed manifest, checks them with the keys the release pins and runs
    the root from RAM. Prints the app's /version, what was fetched and whether the disk was
    written; the console and server logs stay in the lab's netboot/ folder. Needs root.

    Example: fleet lab netboot out/release --trust keys/release.pub --disk out/disk.img
    """
    from fleet.boards import get_profile
    from fleet.lab.netboot_run import netboot as run_netboot

    profile = get_profile(board)
    if profile.qemu is None:
        raise UsageError(f"board {board} is not virtual (its profile has no [qemu] table)")
    if disk_image is not None and not disk_image.is_file():
        raise UsageError(f"{disk_image}: no such disk image")
    result = run_netboot(profile, release, trust, disk_image, timeout, progress=note)
    if json_out:
        print_json(result.to_json())
    else:
        for item in result.fetched:
            out.print(
                f"  fetched {item.file}: {item.bytes} bytes in {item.seconds:.2f} s "
                f"({item.rate_mib_s:.1f} MiB/s)"
            )
        disk = "untouched" if result.disk_unchanged else "WRITTEN"
        if result.ok:
            out.print(
                f"netbooted {board} in {result.seconds:.1f} s: app /version {result.version}; "
                f"disk {disk}; logs in {result.folder}"
            )
    if not result.ok:
        raise LabError(f"netboot failed: {result.failure} (logs in {result.folder})")
    if not result.disk_unchanged:
        raise LabError(f"the netbooted board wrote its disk (logs in {result.folder})")
