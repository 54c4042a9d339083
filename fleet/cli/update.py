"""``fleet update`` and ``fleet status``: one board's A/B update over SSH with automatic
rollback, and what the board reports about its slots (docs/ab-update.md)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from fleet import trust as trustlib
from fleet.cli.output import FULL_HELP, JSON_HELP, bytes_progress, note, out, print_json
from fleet.errors import FleetError, UsageError
from fleet.update import machine
from fleet.update.result import EXIT_CODES, Outcome
from fleet.update.status import BoardStatus
from fleet.update.target import Target, from_host, resolve

_TARGET_HELP = "user@host[:port] of a board reachable over SSH, or the name of a virtual lab board."
_TRUST_HELP = (
    "Keys the release must be signed by (a trust folder or one .pub), checked on the host "
    "before anything is sent; the board checks again with its own pinned keys."
)


def _target(
    text: str,
    identity: Path | None,
    known_hosts: Path | None,
    trust_new_host: bool,
    timeout: float,
) -> Target:
    return resolve(text, identity, known_hosts, trust_new_host, timeout)


IdentityOpt = Annotated[
    Path | None,
    typer.Option("--identity", "-i", help="SSH private key (default ~/.ssh/id_ed25519)."),
]
KnownHostsOpt = Annotated[
    Path | None,
    typer.Option("--known-hosts", help="known_hosts file (default ~/.ssh/known_hosts)."),
]
TrustNewOpt = Annotated[
    bool,
    typer.Option(
        "--trust-new-host",
        help="Accept and record the host key of a board not yet in known_hosts.",
    ),
]
ConnectTimeoutOpt = Annotated[
    float, typer.Option("--connect-timeout", min=1, help="Seconds to wait for SSH to answer.")
]


def update(
    target: Annotated[str, typer.Argument(help=_TARGET_HELP)],
    release: Annotated[Path, typer.Argument(help="Release folder (from fleet build).")],
    trust: Annotated[Path | None, typer.Option("--trust", help=_TRUST_HELP)] = None,
    health_timeout: Annotated[
        float | None,
        typer.Option(
            "--health-timeout",
            min=1,
            help="Seconds to wait after the trial reboot for the board to commit or roll "
            "back (default: the release's health deadline + 120). Then the host rolls it back.",
        ),
    ] = None,
    attempts: Annotated[
        int,
        typer.Option(
            "--attempts",
            min=1,
            max=9,
            help="Boot attempts the bootloader gives the new slot before falling back.",
        ),
    ] = 1,
    skip_host_checks: Annotated[
        bool,
        typer.Option(
            "--insecure-skip-host-checks",
            help="Send the release unchecked, leaving every check to the board "
            "(to test the board's own verification).",
        ),
    ] = False,
    full: Annotated[bool, typer.Option("--full", help=FULL_HELP)] = False,
    identity: IdentityOpt = None,
    known_hosts: KnownHostsOpt = None,
    trust_new_host: TrustNewOpt = False,
    connect_timeout: ConnectTimeoutOpt = 10.0,
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Update one board to RELEASE with an A/B trial boot and automatic rollback.

    The release is verified here, streamed into the board's inactive slot (the board
    hashes it as it writes and verifies the signatures with its own keys), booted on
    trial, and committed by the board once the app's health check passes. A trial that
    fails its health check, does not boot or hangs is rolled back by the board and its
    bootloader on their own.

    Where the host holds the release in the board's running slot (fleet build and
    fleet update keep every release they touch), each payload goes as a delta against
    that slot, rebuilt by the board and checked like a full one; a delta the board
    refuses is followed by the payload in full, in the same run. --json lists each
    payload's method and bytes (docs/delta.md).

    Prints one outcome: updated, rolled-back (health failed, boot failed, timeout),
    refused (with the board's reason) or unreachable. Exit codes: 0 updated,
    10 rolled-back, 11 refused, 12 unreachable.

    Example: fleet update pi@192.0.2.7 out/release --trust keys/release.pub
    """
    if trust is None and not skip_host_checks:
        raise UsageError(
            "give --trust KEYS (the keys the release must be signed by); "
            "--insecure-skip-host-checks leaves every check to the board"
        )
    policy = trustlib.load_trust(trust) if trust is not None and not skip_host_checks else None
    board = _target(target, identity, known_hosts, trust_new_host, connect_timeout)
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        # A rebooting board refuses connections for a while; that is expected, and
        # paramiko would print a traceback for each try.
        logging.getLogger("paramiko").setLevel(logging.CRITICAL)
    with bytes_progress() as progress:
        tasks: dict[str, Any] = {}

        def on_bytes(name: str, sent: int, size: int) -> None:
            if name not in tasks:
                tasks[name] = progress.add_task(f"{name}", total=size)
            progress.update(tasks[name], completed=sent)

        options = machine.Options(
            trust=policy,
            health_timeout=health_timeout,
            attempts=attempts,
            note=lambda message: note(f"{board.name}: {message}"),
            progress=on_bytes,
            deltas=not full,
        )
        result = machine.update(board, release, options)
    if json_out:
        print_json(result.as_dict())
    else:
        out.print(result.summary(), markup=False)
        if result.detail and result.outcome is not Outcome.UPDATED:
            out.print(f"  board says: {result.detail}", markup=False)
    sys.exit(EXIT_CODES[result.outcome])


def status(
    target: Annotated[str | None, typer.Argument(help=_TARGET_HELP)] = None,
    inventory: Annotated[
        Path | None,
        typer.Option(
            "--inventory",
            "-I",
            help="Every board of this inventory (fleet TOML or Ansible), queried in parallel.",
        ),
    ] = None,
    group: Annotated[
        str | None,
        typer.Option("--group", "-g", help="With --inventory or --published: only this group."),
    ] = None,
    published: Annotated[
        str | None,
        typer.Option(
            "--published",
            help="What the boards of a pull store reported (a folder or s3://BUCKET/PREFIX).",
        ),
    ] = None,
    endpoint_url: Annotated[
        str | None, typer.Option("--endpoint-url", help="With --published: an S3 endpoint.")
    ] = None,
    identity: IdentityOpt = None,
    known_hosts: KnownHostsOpt = None,
    trust_new_host: TrustNewOpt = False,
    connect_timeout: ConnectTimeoutOpt = 10.0,
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Show a board's slots, boot state, app version and health; with --inventory, one
    line per board of the fleet (exit 12 if any board is unreachable).

    Examples: fleet status pi@192.0.2.7; fleet status -I fleet.toml --group lobby;
    fleet status --published /srv/fleet
    """
    if published is not None:
        if target is not None or inventory is not None:
            raise UsageError("--published takes no TARGET or --inventory")
        from fleet.cli.publish import published_status

        published_status(published, group, endpoint_url, json_out)
        return
    if (target is None) == (inventory is None):
        raise UsageError("give one board (TARGET), --inventory FILE or --published STORE")
    if inventory is not None:
        _fleet_status(inventory, group, identity, trust_new_host, connect_timeout, json_out)
        return
    assert target is not None
    board = _target(target, identity, known_hosts, trust_new_host, connect_timeout)
    state = machine.board_status(board)
    if json_out:
        print_json(state.raw)
        return
    for line in _status_lines(board.name, state):
        out.print(line, markup=False)


def _status_lines(name: str, state: BoardStatus) -> list[str]:
    raw = state.raw
    lines = [
        f"{name}: {raw.get('hostname', '')} ({state.board}), runs "
        f"{state.app_version} (release {state.app_release}) from slot {state.running_slot}, "
        f"health {state.health}",
        f"  default slot {state.default_slot}; "
        + (
            f"slot {state.trial_slot} on trial, {raw.get('attempts_left')} attempt(s) left"
            if state.trial_pending
            else "nothing on trial"
        )
        + f"; floor {state.floor}",
        f"  host key {raw.get('host_key', 'unknown')}",
    ]
    for name_ in ("A", "B"):
        info = state.slot(name_)
        if info is None:
            lines.append(f"  slot {name_}: empty or not bootable")
        else:
            sha = (info.manifest_sha256 or "unknown")[:16]
            lines.append(f"  slot {name_}: {info.version} (release {info.release}), manifest {sha}")
    if state.last_trial:
        lines.append(f"  last trial: {state.last_trial}")
    if raw.get("last_fallback"):
        lines.append(f"  last fallback: {raw.get('last_fallback')}")
    wifi = raw.get("wifi")
    if isinstance(wifi, dict):
        # The board's words, shown as text only (markup is off below).
        where = f", address {wifi.get('address')}" if wifi.get("address") else ""
        lines.append(
            f"  wifi {wifi.get('interface')}: {wifi.get('state')}"
            + (f", network {wifi.get('ssid')!r}" if wifi.get("ssid") else "")
            + where
        )
    data = raw.get("data")
    if isinstance(data, dict):
        lines.append(
            f"  data partition: {data.get('state')}, {data.get('used_kib')} KiB used, "
            f"{data.get('free_kib')} KiB free"
        )
    return lines


STATUS_THREADS = 32  # boards asked at once: a handshake each, a few ms of CPU


def _fleet_status(
    inventory: Path,
    group: str | None,
    identity: Path | None,
    trust_new_host: bool,
    connect_timeout: float,
    json_out: bool,
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from fleet import inventory as inv

    hosts = inv.load(inventory).select(group)
    targets = [from_host(h, identity, trust_new_host, connect_timeout) for h in hosts]
    logging.getLogger("paramiko").setLevel(logging.CRITICAL)

    def ask(board: Target) -> tuple[Target, BoardStatus | None, str]:
        try:
            return board, machine.board_status(board), ""
        except FleetError as exc:
            return board, None, str(exc)

    with ThreadPoolExecutor(max(1, min(STATUS_THREADS, len(targets)))) as pool:
        answers = list(pool.map(ask, targets))
    if json_out:
        print_json(
            [
                {
                    "name": b.name,
                    "address": b.host,
                    "port": b.port,
                    "reachable": state is not None,
                    "error": problem,
                    "status": state.raw if state else None,
                }
                for b, state, problem in answers
            ]
        )
    else:
        from rich.table import Table
        from rich.text import Text

        table = Table(box=None, pad_edge=False)
        for column in ("board", "address", "slot", "release", "health", "trial", "host key"):
            table.add_column(column)
        for b, state, problem in answers:
            where = f"{b.host}:{b.port}"
            if state is None:
                table.add_row(
                    Text(b.name), Text(where), "-", "-", "unreachable", "-", Text(problem)
                )
                continue
            trial = f"slot {state.trial_slot}" if state.trial_pending else "-"
            table.add_row(
                Text(b.name),
                Text(where),
                state.running_slot,
                Text(f"{state.app_release} ({state.app_version})"),
                Text(state.health),
                trial,
                Text(str(state.raw.get("host_key", ""))),
            )
        out.print(table)
    if any(state is None for _, state, _ in answers):
        sys.exit(EXIT_CODES[Outcome.UNREACHABLE])
