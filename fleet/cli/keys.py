"""``fleet keys``: make Ed25519 release keys (signify format)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fleet import trust
from fleet.cli.output import JSON_HELP, out, print_json

app = typer.Typer(
    help=(
        "Make release signing keys. A key pair is NAME.sec (secret, mode 0600, keep it off "
        "boards) and NAME.pub (public: put it in the boards' trust folder). Both are in "
        "signify's format, so `signify-openbsd -S -s NAME.sec` and `-V -p NAME.pub` work too."
    ),
    no_args_is_help=True,
)


@app.command("generate")
def generate(
    out_dir: Annotated[
        Path, typer.Option("--out", help="Folder to write NAME.sec and NAME.pub to.")
    ],
    name: Annotated[
        str | None,
        typer.Option("--name", help="File name stem for the key pair (default: the key's id)."),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Generate an Ed25519 key pair. Existing files are never overwritten.

    Example: fleet keys generate --out keys --name release-2025
    """
    made = trust.generate_key(out_dir, name)
    if json_out:
        print_json({"key_id": made.key_id, "secret": str(made.secret), "public": str(made.public)})
        return
    out.print(f"key {made.key_id}")
    out.print(f"  secret key: {made.secret} (mode 0600; never copy it onto a board)")
    out.print(f"  public key: {made.public} (add it to the boards' trust folder)")
