"""``fleet sign`` and ``fleet verify``: add a signature to a release folder, and check a
release folder against a trust policy exactly as a board would."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fleet import trust as trustlib
from fleet.cli.output import JSON_HELP, bytes_progress, out, print_json
from fleet.errors import ReleaseError

_RELEASE_HELP = "Release folder (holds manifest.json, signatures/ and the payloads)."
_TRUST_HELP = (
    "Trusted keys: a folder of *.pub with optional 'revoked' (key ids, one per line) "
    "and 'threshold' (how many trusted keys must sign) files, or a single .pub file."
)


def sign(
    release: Annotated[Path, typer.Argument(help=_RELEASE_HELP)],
    key: Annotated[Path, typer.Option("--key", help="Secret key (NAME.sec from fleet keys).")],
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Add a signature to a release (signatures/KEYID.sig).

    The payloads are checked against the manifest first; a mismatch is refused.

    Signing again with the same key changes nothing.

    Sign with several keys to rotate keys or to meet a threshold (docs/trust.md).

    Example: fleet sign out/release --key keys/release-2025.sec
    """
    result = trustlib.sign_release_detail(release, key)
    if json_out:
        print_json({"key_id": result.key_id, "added": result.added, "signature": str(result.path)})
        return
    if result.added:
        out.print(f"signed {release} with key {result.key_id} ({result.path})")
    else:
        out.print(f"{release} is already signed by key {result.key_id}")


def verify(
    release: Annotated[Path, typer.Argument(help=_RELEASE_HELP)],
    trust: Annotated[Path, typer.Option("--trust", help=_TRUST_HELP)],
    floor: Annotated[
        int | None,
        typer.Option(
            "--floor",
            min=0,
            help="Refuse release numbers not above N (a board's floor; it only rises).",
        ),
    ] = None,
    board: Annotated[
        str | None, typer.Option("--board", help="Refuse a release made for another board.")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Check a release exactly as a board would; exit 0 only if it passes.

    Signatures must meet the trust policy; the manifest must be well formed.

    Board and floor must match; each payload's size and SHA-256 must match the manifest.

    On failure one line says exactly what failed, and the exit code is 5.

    Example: fleet verify out/release --trust keys/ --floor 41 --board rpi4b
    """
    policy = trustlib.load_trust(trust)
    with bytes_progress() as progress:
        task = progress.add_task("hashing payloads", total=None)
        report = trustlib.inspect_release(
            release, policy, floor, board, lambda n: progress.advance(task, n)
        )
    if json_out:
        print_json(report.as_dict())
    problems = report.problems
    if problems:
        raise ReleaseError(f"{release}: {problems[0]}")
    if json_out:
        return
    manifest = report.manifest
    assert manifest is not None
    signers = ", ".join(report.signatures.valid)
    out.print(
        f"ok: {manifest.app} {manifest.version} release {manifest.release} for "
        f"{manifest.board}; signed by {signers} "
        f"({len(report.signatures.valid)} of threshold {report.signatures.threshold}); "
        f"{len(report.payloads)} payloads match"
    )
