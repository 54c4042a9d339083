"""``fleet serve``: network boot over TFTP, straight from a verified release."""

from __future__ import annotations

import contextlib
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from fleet.errors import UsageError


def serve(
    release: Annotated[
        Path, typer.Option("--release", help="The release folder every board boots.")
    ],
    trust: Annotated[
        Path,
        typer.Option("--trust", help="Keys the release must be signed by (a .pub or a folder)."),
    ],
    # boards on the LAN broadcast for a server: every address unless told otherwise
    bind: Annotated[str, typer.Option("--bind", help="Address to listen on.")] = "0.0.0.0",  # noqa: S104
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="UDP port.")] = 69,
    max_blksize: Annotated[
        int,
        typer.Option(
            "--max-blksize", min=512, max=65464, help="Largest block size granted (RFC 2348)."
        ),
    ] = 1468,
) -> None:
    """Serve a verified release over TFTP (read-only), one log line per transfer.

    The release is verified when loaded (signatures against --trust, every payload's
    hash) and served from memory: a file changed on disk afterwards is never served.
    Boards get the boot partition's files at the root and the release itself under
    release/ (manifest, signatures, payloads). blksize, tsize, timeout and windowsize
    (RFC 7440) are negotiated. Stop with Ctrl-C or SIGTERM.

    Example: fleet serve --release out/release --trust keys/release.pub --bind 192.0.2.1
    """
    from fleet.netboot.server import Refusal, TftpServer
    from fleet.netboot.tree import load_release
    from fleet.trust import load_trust

    tree = load_release(release, load_trust(trust))

    def resolve(ip: str, path: str) -> tuple[str, bytes]:
        data = tree.get(path)
        if data is None:
            raise Refusal(1, "file not found")
        return ip, data

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        server = TftpServer(resolve, bind, port, log=log, max_blksize=max_blksize)
    except OSError as exc:
        raise UsageError(f"cannot listen on {bind}:{port}: {exc.strerror}") from None
    signal.signal(signal.SIGTERM, lambda *_: server.stop())
    log(
        f"serving {tree.label}: {len(tree.files)} files, {tree.size >> 20} MiB, "
        f"on {bind}:{server.port}"
    )
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    log(f"stopped after {server.transfers} transfers")
