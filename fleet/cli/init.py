"""``fleet init``: start a new app from a working sample."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fleet.cli.output import JSON_HELP, out, print_json
from fleet.scaffold import TEMPLATES, scaffold


def init(
    folder: Annotated[
        Path, typer.Argument(metavar="DIR", help="Folder for the new app (made if missing).")
    ],
    language: str = typer.Option(
        "c", "--language", "-l", help=f"The sample's language: {' or '.join(TEMPLATES)}."
    ),
    name: str | None = typer.Option(
        None, "--name", "-n", help="App name (lowercase, digits, '-'); default: the folder's name."
    ),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Make a new app: fleet.toml plus a small HTTP service (GET /health, /version) that
    builds for the host and for every board. Refuses a folder that has a fleet.toml.

    Example: fleet init myapp --language go; fleet build --host --project myapp
    """
    made = scaffold(folder, language, name)
    if json_out:
        print_json(
            {
                "project": str(made.root),
                "name": made.name,
                "language": made.language,
                "files": list(made.files),
            }
        )
        return
    out.print(f"created app {made.name} ({made.language}) in {made.root}: {', '.join(made.files)}")
    out.print(f"next: fleet build --host --project {made.root}")
    out.print(f"      fleet build --board qemu-virt-arm64 --project {made.root}")
