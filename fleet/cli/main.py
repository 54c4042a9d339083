"""The ``fleet`` command: registers the command groups and owns the one top-level error
handler that maps fleet's exceptions to exit codes and one-line messages."""

from __future__ import annotations

import logging
import sys

import typer

from fleet import __version__
from fleet.cli import boards, devices, flash, keys, trust
from fleet.cli import build as build_cmd
from fleet.cli import init as init_cmd
from fleet.cli import lab as lab_cli
from fleet.cli import provision as provision_cli
from fleet.cli import update as update_cli
from fleet.errors import FleetError

app = typer.Typer(
    name="fleet",
    help=(
        "Build, sign, flash, netboot and A/B-update one app on Raspberry Pi class ARM boards.\n\n"
        "Typical flow: fleet init APP; fleet build --board qemu-virt-arm64 --project APP; "
        "fleet lab up --board qemu-virt-arm64 --disk out/disk.img."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

_debug = False


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"fleet {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Log every command run; show tracebacks."),
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True,
        help="Print fleet's version and exit.",
    ),
) -> None:
    global _debug
    _debug = debug
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(name)s: %(message)s",
        stream=sys.stderr,
    )


app.add_typer(boards.app, name="boards")
app.add_typer(lab_cli.app, name="lab")
app.command("build")(build_cmd.build)
app.command("init")(init_cmd.init)
app.add_typer(keys.app, name="keys")
app.command("sign")(trust.sign)
app.command("verify")(trust.verify)
app.command("flash")(flash.flash)
app.command("devices")(devices.devices)
app.command("provision")(provision_cli.provision_cmd)
app.command("update")(update_cli.update), app.command("status")(update_cli.status)


def main() -> None:
    # typer's standalone mode handles usage errors (exit 2) and Ctrl-C; fleet's own
    # errors pass through it and become one line here.
    try:
        app()
    except FleetError as exc:
        if _debug:
            raise
        print(f"fleet: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
