"""``fleet serve``: network boot over TFTP, straight from verified releases."""

from __future__ import annotations

import contextlib
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from fleet.errors import FleetError, UsageError

if TYPE_CHECKING:
    from fleet.netboot.boards import BoardMap


def serve(
    trust: Annotated[
        Path | None,
        typer.Option("--trust", help="Keys the releases must be signed by (a .pub or a folder)."),
    ] = None,
    release: Annotated[
        Path | None, typer.Option("--release", help="The release folder every board boots.")
    ] = None,
    map_file: Annotated[
        Path | None,
        typer.Option(
            "--map",
            help="TOML file mapping boards (serial, mac, address) to releases and settings; "
            "reloaded on SIGHUP (docs/netboot.md).",
        ),
    ] = None,
    # boards on the LAN broadcast for a server: every address unless told otherwise
    bind: Annotated[str, typer.Option("--bind", help="Address to listen on.")] = "0.0.0.0",  # noqa: S104
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="UDP port.")] = 69,
    max_blksize: Annotated[
        int,
        typer.Option(
            "--max-blksize", min=512, max=65464, help="Largest block size granted (RFC 2348)."
        ),
    ] = 1468,
    dnsmasq_conf: Annotated[
        bool,
        typer.Option(
            "--dnsmasq-conf",
            help="Print a proxy-DHCP configuration for dnsmasq pointing boards at --bind, "
            "and exit.",
        ),
    ] = False,
    subnet: Annotated[
        str | None,
        typer.Option("--subnet", help="With --dnsmasq-conf: the boards' network (default /24)."),
    ] = None,
    interface: Annotated[
        str | None,
        typer.Option("--interface", help="With --dnsmasq-conf: the interface dnsmasq answers on."),
    ] = None,
) -> None:
    """Serve verified releases over TFTP (read-only), one log line per transfer.

    Each release is verified when loaded (signatures against --trust, every payload's
    hash) and served from memory: a file changed on disk afterwards is never served.
    Boards get the boot partition's files at the root (or in their serial or MAC
    folder, as Raspberry Pi firmware asks) and the release itself under release/.
    blksize, tsize, timeout and windowsize (RFC 7440) are negotiated. With --map, each
    board gets its own release and settings; SIGHUP reloads the map without dropping
    transfers in flight. Stop with Ctrl-C or SIGTERM.

    Example: fleet serve --map boards.toml --trust keys/release.pub --bind 192.0.2.1

    DHCP stays with dnsmasq: fleet serve --dnsmasq-conf --bind 192.0.2.1 prints its
    proxy-DHCP configuration.
    """
    if dnsmasq_conf:
        from fleet.netboot.dnsmasq import config

        sys.stdout.write(config(bind, subnet, interface))
        return
    from fleet.netboot.boards import load_map, single
    from fleet.netboot.server import TftpServer
    from fleet.netboot.tree import load_release
    from fleet.trust import load_trust

    if (release is None) == (map_file is None):
        raise UsageError("give one of --release R (every board) or --map FILE")
    if trust is None:
        raise UsageError("give --trust KEYS: the keys the releases must be signed by")
    keys = load_trust(trust)

    def load() -> BoardMap:
        if map_file is not None:
            return load_map(map_file, keys)
        assert release is not None
        return single(load_release(release, keys))

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    boards = load()
    try:
        server = TftpServer(boards.resolve, bind, port, log=log, max_blksize=max_blksize)
    except OSError as exc:
        raise UsageError(f"cannot listen on {bind}:{port}: {exc.strerror}") from None
    reload_asked = [False]

    def reload() -> None:
        try:
            fresh = load()
        except FleetError as exc:  # the old map stays in force
            log(f"reload failed, still serving the previous map: {exc}")
            return
        server.resolve = fresh.resolve  # transfers in flight keep the bytes they have
        log(f"reloaded {map_file}: {_describe(fresh)}")

    signal.signal(signal.SIGTERM, lambda *_: server.stop())
    if map_file is not None:
        signal.signal(signal.SIGHUP, lambda *_: reload_asked.__setitem__(0, True))
    log(f"serving {_describe(boards)} on {bind}:{server.port}")
    with contextlib.suppress(KeyboardInterrupt):
        while not server.stopping:
            server.step(0.5)
            if reload_asked[0]:
                reload_asked[0] = False
                reload()
    server.close()
    log(f"stopped after {server.transfers} transfers")


def _describe(boards: BoardMap) -> str:
    if boards.default is not None:
        t = boards.default
        return f"{t.label}: {len(t.files)} files, {t.size >> 20} MiB"
    labels = sorted({b.tree.label for b in boards.boards})
    return f"{len(boards.boards)} boards, releases {', '.join(labels)}"
