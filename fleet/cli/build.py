"""``fleet build``: cross-build the app and wrap it in a signed-ready release and disk image."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import typer

from fleet.boards import get_profile
from fleet.cli.output import JSON_HELP, note, out, print_json, steps_progress
from fleet.delta import store
from fleet.errors import UsageError
from fleet.image.pipeline import STEPS
from fleet.image.pipeline import build as run_build
from fleet.project import load_project


def build(
    board: str = typer.Option(
        None, "--board", "-b", help="Board profile to build for (see `fleet boards`)."
    ),
    project_dir: Path = typer.Option(
        Path("."), "--project", "-p", help="Folder holding fleet.toml."
    ),
    out_dir: Path = typer.Option(
        Path("out"), "--out", "-o", help="Where the release, disk image and report go."
    ),
    key: Path | None = typer.Option(None, "--key", help="Sign the release with this private key."),
    trust: Path | None = typer.Option(
        None,
        "--trust",
        help="Keys the board will trust (folder of *.pub with revoked/threshold, or one .pub). "
        "Default: the --key's public key.",
    ),
    host: bool = typer.Option(
        False, "--host", help="Build only the app, for this machine, to test it natively."
    ),
    development: bool = typer.Option(
        False,
        "--dev",
        help="A development image: besides the agent's key, boards also let in shell keys "
        "(fleet lab ssh). Production images (the default) carry no way to a shell.",
    ),
    netboot: bool = typer.Option(
        False,
        "--netboot",
        help="Also make the release netbootable (U-Boot boards): boot.scr.uimg and "
        "initrd-net.zst in its boot payload, 1.9 MB more in every update (docs/netboot.md).",
    ),
    release_number: int | None = typer.Option(
        None,
        "--release-number",
        min=1,
        help="Build as this release number instead of fleet.toml's. Boards refuse every "
        "release not above their floor, so going back to an older app is building its "
        "sources again with a number above the fleet's newest release.",
    ),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Cross-build the app for a board and make its release and disk image.

    Writes OUT/release/ (manifest.json + boot.vfat + rootfs.squashfs), OUT/disk.img with
    OUT/disk.img.bmap for flashing, and OUT/sbom.spdx.json + OUT/report.txt. Debian
    package versions are pinned in fleet.lock beside fleet.toml; rebuilding with the same
    inputs gives the same bytes.

    To go back to an older app version: check out its sources and build them with
    `--release-number N` above the newest release the boards have committed.
    """
    project = load_project(project_dir)
    if release_number is not None:
        project = dataclasses.replace(project, release_number=release_number)
    if host:
        from fleet.image.app import build_app

        program = build_app(project, "host", out_dir.resolve() / ".host", host=True)
        if json_out:
            print_json({"program": str(program)})
        else:
            out.print(f"built {program} for this machine; run it with PORT=8080 {program}")
        return
    if board is None:
        raise typer.BadParameter("give --board NAME (or --host)", param_hint="--board")
    profile = get_profile(board)
    if profile.unsupported:
        raise UsageError(f"board {profile.name} is not supported: {profile.unsupported}")
    started = time.monotonic()
    with steps_progress() as progress:
        task = progress.add_task(f"build {project.name} for {profile.name}", total=len(STEPS))

        def step(name: str) -> None:
            done = STEPS.index(name)
            progress.update(task, completed=done, description=f"build: {name}")
            if not progress.console.is_terminal:
                note(f"build: {name}")

        result = run_build(
            project,
            profile,
            out_dir,
            key=key,
            trust=trust,
            development=development,
            netboot=netboot,
            step=step,
        )
        progress.update(task, completed=len(STEPS), description="build: done")
    seconds = time.monotonic() - started
    kept: str | None = None
    try:
        # The host then knows the bytes a board flashed or updated with this release runs,
        # and sends later releases to it as deltas (docs/delta.md).
        kept = str(store.keep(result.release))
    except (OSError, store.StoreError) as exc:
        note(f"build: the release is not kept for deltas: {exc}")
    sizes = {p.name: p.size for p in result.manifest.payloads}
    summary = {
        "app": project.name,
        "version": project.version,
        "release_number": result.manifest.release,
        "board": profile.name,
        "release": str(result.release),
        "disk": str(result.disk),
        "bmap": str(result.bmap),
        "report": str(result.report) if result.report else None,
        "payload_bytes": sizes,
        "signed_by": list(result.signed_by),
        "kept_in": kept,
        "seconds": round(seconds, 1),
    }
    if json_out:
        print_json(summary)
        return
    total = sum(sizes.values())
    out.print(
        f"built {project.name} {project.version} (release {result.manifest.release}) "
        f"for {profile.name} in {seconds:.1f} s"
    )
    out.print(
        f"  release  {result.release}  (boot {sizes['boot'] / 2**20:.1f} MiB + rootfs "
        f"{sizes['rootfs'] / 2**20:.1f} MiB = {total / 2**20:.1f} MiB)"
    )
    out.print(f"  disk     {result.disk}  (+ {result.bmap.name})")
    if result.report:
        out.print(f"  report   {result.report}")
    if result.signed_by:
        out.print(f"  signed   {', '.join(result.signed_by)}")
