"""``fleet boards``: the board profiles fleet knows."""

from __future__ import annotations

import dataclasses
from typing import Any

import typer

from fleet.boards import BoardProfile, all_profiles, get_profile
from fleet.cli.output import JSON_HELP, out, print_json

app = typer.Typer(help="List board profiles (boards/*.toml) or show one.", no_args_is_help=False)


def _as_dict(profile: BoardProfile) -> dict[str, Any]:
    data = dataclasses.asdict(profile)
    data["source"] = str(profile.source)
    return data


@app.callback(invoke_without_command=True)
def boards(
    ctx: typer.Context,
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """List the board profiles: name, architecture, boot method, virtual or real."""
    if ctx.invoked_subcommand is not None:
        return
    profiles = all_profiles()
    if json_out:
        print_json([_as_dict(p) for p in profiles])
        return
    for p in profiles:
        kind = "virtual" if p.virtual else "real"
        line = f"{p.name:<18} {p.arch:<8} {p.boot_method:<12} {kind:<8} {p.description}"
        if p.unsupported:
            line += f" [unsupported: {p.unsupported}]"
        if p.wifi is not None and p.wifi.firmware_missing:
            line += f" [wifi: {p.wifi.firmware_missing}]"
        out.print(line)


@app.command("show")
def show(
    name: str = typer.Argument(..., help="Board profile name, e.g. rpi4b."),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Print one board profile in full."""
    profile = get_profile(name)
    data = _as_dict(profile)
    if json_out:
        print_json(data)
        return
    _print_tree(data, 0)


def _print_tree(data: dict[str, Any], depth: int) -> None:
    pad = "  " * depth
    for key, value in data.items():
        if isinstance(value, dict):
            out.print(f"{pad}{key}:")
            _print_tree(value, depth + 1)
        elif isinstance(value, list | tuple):
            out.print(f"{pad}{key}: {', '.join(str(v) for v in value) or '-'}")
        else:
            out.print(f"{pad}{key}: {'-' if value is None else value}")
