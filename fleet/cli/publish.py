"""``fleet publish``: put a signed release where boards pull it from (docs/pull.md)."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Annotated

import typer

from fleet import trust as trustlib
from fleet.cli.output import JSON_HELP, err, out, print_json
from fleet.errors import UsageError
from fleet.pull import publish as pub
from fleet.pull import reports as rep
from fleet.pull.store import Store, open_store
from fleet.release import load_manifest
from fleet.update.waves import Budget

EXIT_HALTED = 14
_DURATION = re.compile(r"^\s*([0-9]+)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(text: str, option: str) -> int:
    match = _DURATION.match(text)
    if not match or int(match[1]) == 0:
        raise UsageError(f"{option} {text!r}: a duration such as 90s, 30m, 12h or 7d")
    return int(match[1]) * _UNITS[match[2]]


def percents(text: str) -> list[int]:
    try:
        steps = [int(p.strip().removesuffix("%")) for p in text.split(",")]
    except ValueError:
        steps = []
    if not steps or any(not 0 <= p <= 100 for p in steps) or steps != sorted(steps):
        raise UsageError(f"--percent {text!r}: rising percentages from 0 to 100, e.g. 10,50,100")
    return steps


def publish(
    release: Annotated[
        Path | None, typer.Argument(help="The release folder (fleet build's out/release).")
    ] = None,
    to: Annotated[
        str, typer.Option("--to", help="A folder (served by any web server) or s3://BUCKET/PREFIX.")
    ] = "",
    group: Annotated[
        str, typer.Option("--group", "-g", help="The boards' pull group.")
    ] = "default",
    percent: Annotated[
        str,
        typer.Option(
            "--percent",
            help="Share of the group that takes the release (client-side phasing); with "
            "--watch a rising list, e.g. 10,50,100, one wave each.",
        ),
    ] = "100",
    keys: Annotated[
        list[Path] | None,
        typer.Option("--key", help="Release (targets) secret key; repeat for a threshold."),
    ] = None,
    timestamp_key: Annotated[
        Path | None, typer.Option("--timestamp-key", help="The online timestamp secret key.")
    ] = None,
    trust: Annotated[
        Path | None,
        typer.Option("--trust", help="With --refresh: the release public key(s), file or folder."),
    ] = None,
    refresh: Annotated[
        bool,
        typer.Option("--refresh", help="Only renew the group's timestamp (run it from a timer)."),
    ] = False,
    expires: Annotated[
        str, typer.Option("--expires", help="How long the targets document holds.")
    ] = "30d",
    timestamp_expires: Annotated[
        str,
        typer.Option("--timestamp-expires", help="How long a timestamp holds; refresh sooner."),
    ] = "1d",
    endpoint_url: Annotated[
        str | None, typer.Option("--endpoint-url", help="An S3-compatible store's endpoint.")
    ] = None,
    acl: Annotated[
        str | None,
        typer.Option("--acl", help="S3: a canned ACL for every object, e.g. public-read."),
    ] = None,
    inventory: Annotated[
        Path | None,
        typer.Option(
            "--inventory",
            "-I",
            help="The group's boards (names = board hostnames): for --watch, and for the "
            "per-board report grants of an S3 store.",
        ),
    ] = None,
    watch: Annotated[
        bool,
        typer.Option(
            "--watch",
            help="Wait for each wave's reports; halt (freeze the percentage) when the "
            "failure budget is spent.",
        ),
    ] = False,
    max_failures: Annotated[
        str, typer.Option("--max-failures", help="Boards, or a percentage, that may fail.")
    ] = "0",
    min_finished: Annotated[
        int, typer.Option("--min-finished", help="Reports before a percentage budget is judged.")
    ] = 1,
    wave_time: Annotated[
        str, typer.Option("--wave-time", help="How long --watch waits for a wave's reports.")
    ] = "30m",
    delta_from: Annotated[
        list[Path] | None,
        typer.Option(
            "--delta-from",
            help="A release folder boards may still run (e.g. the factory image's): its "
            "boards fetch deltas from it too. Repeat for several.",
        ),
    ] = None,
    deltas: Annotated[
        bool,
        typer.Option(
            "--deltas/--no-deltas",
            help="Publish deltas from the release the group offered before (and from "
            "--delta-from), so boards fetch only what changed.",
        ),
    ] = True,
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Publish a signed release for boards that pull: payloads under content-addressed
    names, then the group's signed targets document, then a short-lived signed timestamp
    (docs/pull.md). A publish cut short is finished by running it again.

    Examples: fleet publish out/release --to /srv/fleet --group lobby --key
    keys/release.sec --timestamp-key keys/timestamp.sec; fleet publish out/release --to
    s3://bucket/fleet --group prod --percent 10,50,100 --watch -I fleet.toml
    --max-failures 2% --key ... --timestamp-key ...; fleet publish --refresh --to
    s3://bucket/fleet --group prod --timestamp-key keys/timestamp.sec --trust
    keys/release.pub
    """
    if not to:
        raise UsageError("give --to FOLDER or --to s3://BUCKET/PREFIX")
    if timestamp_key is None:
        raise UsageError("give --timestamp-key (the online timestamp role's secret key)")
    store = open_store(to, endpoint_url, acl)
    ts_key = trustlib.load_secret_key(timestamp_key)
    ts_life = duration(timestamp_expires, "--timestamp-expires")
    boards = _boards(inventory, group)
    if refresh:
        if release is not None:
            raise UsageError("--refresh takes no RELEASE")
        if trust is None:
            raise UsageError("--refresh needs --trust (the release public keys)")
        stamp = pub.refresh(
            store, group, ts_key, list(trustlib.load_trust(trust).keys.values()), ts_life
        )
        grants = pub.write_grants(store, group, boards, 2 * ts_life)
        result = {
            "group": group,
            "timestamp_version": stamp.version,
            "expires": stamp.expires,
            "targets_version": stamp.targets_version,
            "grants": grants,
        }
        if json_out:
            print_json(result)
        else:
            out.print(
                f"group {group}: timestamp {stamp.version} for targets "
                f"{stamp.targets_version}, valid {timestamp_expires}",
                markup=False,
            )
        return
    if release is None:
        raise UsageError("give the RELEASE folder to publish (or --refresh)")
    if not keys:
        raise UsageError("give --key (the release key that signs the targets document)")
    steps = percents(percent)
    if len(steps) > 1 and not watch:
        raise UsageError("a list of percentages is a staged publish: add --watch")
    if watch and inventory is None:
        raise UsageError("--watch needs --inventory (the boards whose reports to wait for)")
    budget = Budget.parse(max_failures, min_finished)
    targets_keys = [trustlib.load_secret_key(k) for k in keys]
    life = duration(expires, "--expires")
    wave_s = duration(wave_time, "--wave-time")
    manifest = load_manifest(release)

    def say(text: str) -> None:
        if not json_out:
            err.print(text, markup=False)

    if delta_from and not deltas:
        raise UsageError("--delta-from names bases for deltas; drop --no-deltas")
    first = pub.publish(
        store,
        release,
        group,
        steps[0],
        targets_keys,
        ts_key,
        life,
        ts_life,
        say,
        delta_from=delta_from or (),
        deltas=deltas,
    )
    pub.write_grants(store, group, boards, 2 * ts_life)
    waves: list[rep.WaveResult] = []
    halted = False
    for index, step in enumerate(steps):
        if index > 0:
            pub.set_percent(store, group, manifest.board, step, targets_keys, ts_key, life, ts_life)
            say(f"group {group}: release {manifest.release} now at {step}%")
        if not watch:
            break
        wave = rep.watch_wave(store, boards, manifest.release, step, budget, wave_s, say=say)
        waves.append(wave)
        say(
            f"{step}%: {len(wave.updated)} updated, {len(wave.failed)} failed, "
            f"{len(wave.silent)} silent, of {len(wave.wave)}"
        )
        if wave.budget_spent:
            halted = True
            break
    _finish(first, steps, waves, halted, budget, json_out)


def _boards(inventory: Path | None, group: str) -> list[str]:
    if inventory is None:
        return []
    from fleet import inventory as inv

    return [h.name for h in inv.load(inventory).select(group)]


def _finish(
    first: pub.Published,
    steps: list[int],
    waves: list[rep.WaveResult],
    halted: bool,
    budget: Budget,
    json_out: bool,
) -> None:
    frozen = waves[-1].percent if halted else steps[-1] if waves else steps[0]
    message = (
        f"halted: failure budget spent ({budget}); release {first.release} frozen at {frozen}% "
        f"of group {first.group}"
        if halted
        else f"published release {first.release} ({first.version}) for {first.profile} to "
        f"{frozen}% of group {first.group}"
    )
    if json_out:
        print_json(
            {
                **first.as_dict(),
                "state": "halted" if halted else "published",
                "percent": frozen,
                "waves": [w.as_dict() for w in waves],
                "message": message,
            }
        )
    else:
        out.print(message, markup=False)
        out.print(
            f"  {first.uploaded} object(s) uploaded ({first.bytes_sent} bytes), "
            f"{first.skipped} already there, {first.deltas} delta(s) listed; targets "
            f"{first.targets_version}, "
            f"timestamp {first.timestamp_version}",
            markup=False,
        )
        for wave in waves:
            out.print(
                f"  {wave.percent}%: {len(wave.updated)} updated, {len(wave.failed)} "
                f"failed ({', '.join(wave.failed) or 'none'}), {len(wave.silent)} silent",
                markup=False,
            )
    if halted:
        sys.exit(EXIT_HALTED)


def published_status(
    store_url: str, group: str | None, endpoint_url: str | None, json_out: bool
) -> None:
    """``fleet status --published STORE``: every board's last report, counts per group."""
    store: Store = open_store(store_url, endpoint_url)
    reports = [r for r in rep.read_reports(store) if group is None or r.group == group]
    counts = rep.tally(reports)
    if json_out:
        print_json({"boards": [r.as_dict() for r in reports], "groups": counts})
        return
    for r in reports:
        if r.problem:
            out.print(f"{r.board}: {r.problem}", markup=False)
            continue
        target = f" (release {r.target_release})" if r.target_release is not None else ""
        fetched = f", {r.fetched} bytes fetched ({r.method})" if r.method else ""
        out.print(
            f"{r.board} [{r.group}]: {r.result}{target}{fetched}; runs {r.version} "
            f"(release {r.release}) from slot {r.slot}" + (f"; {r.reason}" if r.reason else ""),
            markup=False,
        )
    for name, tallies in counts.items():
        out.print(
            f"group {name}: " + ", ".join(f"{n} {k}" for k, n in tallies.items()), markup=False
        )
