"""The ``fleet`` command: registers the command groups and owns the one top-level error
handler that maps fleet's exceptions to exit codes and one-line messages."""

from __future__ import annotations

import importlib
import logging
import sys

import typer

from fleet import __version__
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
    rich_markup_mode="markdown",
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
        False,
        "--version",
        callback=_print_version,
        is_eager=True,
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


# Command name -> (module, attribute, kind). Only the module of the command being run is
# imported, so `fleet flash` does not pay for paramiko and `fleet lab` not for pyudev.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "boards": ("fleet.cli.boards", "app", "group"),
    "init": ("fleet.cli.init", "init", "command"),
    "build": ("fleet.cli.build", "build", "command"),
    "keys": ("fleet.cli.keys", "app", "group"),
    "sign": ("fleet.cli.trust", "sign", "command"),
    "verify": ("fleet.cli.trust", "verify", "command"),
    "lab": ("fleet.cli.lab", "app", "group"),
    "devices": ("fleet.cli.devices", "devices", "command"),
    "flash": ("fleet.cli.flash", "flash", "command"),
    "provision": ("fleet.cli.provision", "provision_cmd", "command"),
    "update": ("fleet.cli.update", "update", "command"),
    "status": ("fleet.cli.update", "status", "command"),
    "rollout": ("fleet.cli.rollout", "app", "group"),
    "publish": ("fleet.cli.publish", "publish", "command"),
    "serve": ("fleet.cli.serve", "serve", "command"),
    "hil": ("fleet.cli.hil", "app", "group"),
}


_registered: set[str] = set()


def register(names: list[str] | None = None) -> typer.Typer:
    """Attach the named commands (all of them by default, e.g. for --help); returns the app
    (tests drive it with typer's CliRunner)."""
    for name in names or list(COMMANDS):
        if name in _registered:
            continue
        _registered.add(name)
        module_name, attribute, kind = COMMANDS[name]
        target = getattr(importlib.import_module(module_name), attribute)
        if kind == "group":
            app.add_typer(target, name=name)
        else:
            app.command(name)(target)
    return app


def _command_in(argv: list[str]) -> str | None:
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in COMMANDS else None
    return None


def main() -> None:
    # typer's standalone mode handles usage errors (exit 2) and Ctrl-C; fleet's own
    # errors pass through it and become one line here.
    command = _command_in(sys.argv[1:])
    register([command] if command else None)
    try:
        app()
    except FleetError as exc:
        if _debug:
            raise
        print(f"fleet: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
