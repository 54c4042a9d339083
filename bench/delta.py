"""Delta updates: bytes on the wire beside a full release and an rsync of the rootfs image,
and the board's apply time beside a full transfer, in the same run.

Three changes, each a real pair of `fleet build`s of examples/hello-c for qemu-virt-arm64:
- one-line: one line of src/hello.c changed (and the version raised);
- dependency: the next version also ships a Debian library (libsqlite3-0);
- kernel: the same app on another Debian kernel package (an older 6.1 ABI).

For each: the full release's bytes; fleet's delta (zstd --patch-from, what `fleet update`
sends) per payload; `rsync --no-whole-file` of the rootfs image onto the old one (what
went each way between its two processes); their ratios to full; and, on a virtual board
flashed with the old release, `fleet update` with deltas and with --full: wall time, and
each payload's transfer time (stream, apply or write, read back).

--methods adds bsdiff and xdelta3 on the same payloads. --settings rebuilds the one-line
pair's squashfs with other settings (block size, fragments, file order, xz) from the
images' own trees, and prints full size and delta size for each (docs/delta.md).

Usage: .venv/bin/python bench/delta.py [--work DIR] [--methods] [--settings] [--no-board]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fleet.delta.choose import WORTH  # noqa: E402
from fleet.delta.make import delta_for  # noqa: E402
from fleet.image.payloads import LAST_IN_IMAGE  # noqa: E402
from fleet.image.verity import append_hash_tree, release_salt  # noqa: E402
from fleet.release import Manifest, load_manifest  # noqa: E402

FLEET = str(Path(sys.executable).parent / "fleet")
BOARD = "bench-delta"
SOURCE_LINE = 'fprintf(stderr, "hello-c: PORT must be a number from 0 to 65535\\n");'
OLD_KERNEL = "linux-image-6.1.0-47-arm64"
TARGET_SHARE = 0.03  # the target: a one-line change ships under 3% of the release


@dataclass(frozen=True)
class Pair:
    name: str
    base: Path  # release folder
    base_disk: Path
    target: Path


def run(*argv: str | Path, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, env=env, check=False
    )
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, argv))} failed:\n{proc.stderr[-2000:]}")
    return proc.stdout


def project(work: Path, name: str, version: str, release: int, *, line: str | None = None,
            packages: list[str] | None = None, lock_from: Path | None = None) -> Path:
    app = work / name
    if app.exists():
        return app
    shutil.copytree(REPO / "examples/hello-c", app, ignore=shutil.ignore_patterns("fleet.lock"))
    if lock_from is not None:
        shutil.copy(lock_from / "fleet.lock", app / "fleet.lock")
    toml = app / "fleet.toml"
    text = toml.read_text().replace('version = "1.0.0"', f'version = "{version}"')
    text = text.replace("release = 1\n", f"release = {release}\n")
    if packages:
        text = f"packages = {json.dumps(packages)}\n" + text
    toml.write_text(text)
    if line is not None:
        source = app / "src/hello.c"
        source.write_text(source.read_text().replace(SOURCE_LINE, line))
    return app


def build(app: Path, key: Path, boards: Path | None = None) -> Path:
    out = app.parent / f"{app.name}-out"
    if not (out / "release/manifest.json").exists():
        env = {**os.environ, **({"FLEET_BOARDS_DIR": str(boards)} if boards else {})}
        run(FLEET, "build", "--board", "qemu-virt-arm64", "--project", app, "--out", out,
            "--key", key, "--dev", env=env)
    return out


def old_kernel_boards(work: Path) -> Path:
    boards = work / "boards-old-kernel"
    if not boards.exists():
        shutil.copytree(REPO / "boards", boards)
        profile = boards / "qemu-virt-arm64.toml"
        text = profile.read_text().replace(
            'package = "linux-image-arm64"', f'package = "{OLD_KERNEL}"'
        )
        profile.write_text(text)
    return boards


def pairs(work: Path, key: Path) -> list[Pair]:
    v1 = project(work, "v1", "1.0.0", 1)
    v1_out = build(v1, key)
    changed = SOURCE_LINE.replace("must be", "must be given as")
    v2_out = build(project(work, "v2", "2.0.0", 2, line=changed, lock_from=v1), key)
    v3_out = build(
        project(work, "v3", "3.0.0", 3, line=changed, packages=["libsqlite3-0"]), key
    )
    old = build(project(work, "k1", "1.0.0", 1), key, old_kernel_boards(work))
    k2_out = build(project(work, "k2", "1.0.1", 2, lock_from=v1), key)
    return [
        Pair("one-line", v1_out / "release", v1_out / "disk.img", v2_out / "release"),
        Pair("dependency", v2_out / "release", v2_out / "disk.img", v3_out / "release"),
        Pair("kernel", old / "release", old / "disk.img", k2_out / "release"),
    ]


def full_bytes(release: Path) -> int:
    return sum(p.size for p in load_manifest(release).payloads)


def fleet_delta(pair: Pair, store: Path) -> dict[str, int]:
    base, target = load_manifest(pair.base), load_manifest(pair.target)
    sizes = {}
    for payload in target.payloads:
        old = base.payload(payload.name)
        delta = delta_for(pair.base / old.file, old.sha256, pair.target / payload.file,
                          payload.sha256, store)
        sizes[payload.name] = delta.size
    return sizes


def rsync_rootfs(pair: Pair, scratch: Path) -> int:
    """Bytes both ways of an rsync that turns the old rootfs image into the new one."""
    dest = scratch / "rootfs.img"
    shutil.copyfile(pair.base / "rootfs.squashfs", dest)
    out = run("rsync", "--no-whole-file", "--inplace", "-I", "--stats",
              pair.target / "rootfs.squashfs", dest)
    sent = int(re.search(r"Total bytes sent: ([\d,]+)", out)[1].replace(",", ""))
    received = int(re.search(r"Total bytes received: ([\d,]+)", out)[1].replace(",", ""))
    return sent + received


def other_methods(pair: Pair, scratch: Path) -> dict[str, dict[str, int]]:
    base, target = load_manifest(pair.base), load_manifest(pair.target)
    found: dict[str, dict[str, int]] = {"bsdiff": {}, "xdelta3": {}}
    for payload in target.payloads:
        old = pair.base / base.payload(payload.name).file
        new = pair.target / payload.file
        patch = scratch / f"{payload.name}.bsdiff"
        if shutil.which("bsdiff"):
            run("bsdiff", old, new, patch)
            found["bsdiff"][payload.name] = patch.stat().st_size
        patch = scratch / f"{payload.name}.vcdiff"
        if shutil.which("xdelta3"):
            run("xdelta3", "-e", "-f", "-9", "-s", old, new, patch)
            found["xdelta3"][payload.name] = patch.stat().st_size
    return found


def squashfs_tree(release: Path, dest: Path) -> Path:
    manifest = load_manifest(release)
    assert manifest.verity is not None
    image = dest.with_suffix(".sqfs")
    with (release / "rootfs.squashfs").open("rb") as src:
        image.write_bytes(src.read(manifest.verity.hash_offset))
    shutil.rmtree(dest, ignore_errors=True)
    run("unsquashfs", "-q", "-n", "-d", dest, image)
    return dest


SETTINGS = {
    "zstd-19, 256K": ["-comp", "zstd", "-Xcompression-level", "19", "-b", "256K"],
    "zstd-19, 128K": ["-comp", "zstd", "-Xcompression-level", "19", "-b", "128K"],
    "zstd-19, 1M": ["-comp", "zstd", "-Xcompression-level", "19", "-b", "1M"],
    "zstd-19, 256K, no fragments": ["-comp", "zstd", "-Xcompression-level", "19", "-b", "256K",
                                    "-no-fragments"],
    "zstd-19, 256K, app last": ["-comp", "zstd", "-Xcompression-level", "19", "-b", "256K",
                                "-sort", "@SORT@"],
    "zstd-19, 256K, no fragments, app last (fleet's)": ["-comp", "zstd", "-Xcompression-level",
                                                        "19", "-b", "256K", "-no-fragments",
                                                        "-sort", "@SORT@"],
    "xz, 256K, no fragments, app last": ["-comp", "xz", "-b", "256K", "-no-fragments", "-sort",
                                         "@SORT@"],
}


def settings_table(pair: Pair, scratch: Path) -> list[tuple[str, int, int]]:
    """Each setting's rootfs payload as fleet makes it (the squashfs and its dm-verity tree
    with the release salt) for both trees, and the zstd delta between them."""
    trees = [squashfs_tree(r, scratch / n) for r, n in ((pair.base, "a"), (pair.target, "b"))]
    sort = scratch / "sort"
    sort.write_text("".join(f"{rel} -32768\n" for rel in LAST_IN_IMAGE))
    manifest = load_manifest(pair.target)
    salt = release_salt(manifest.app, manifest.board)
    rows = []
    for label, options in SETTINGS.items():
        images = []
        for tree in trees:
            image = scratch / f"{tree.name}.img"
            args = [str(sort) if o == "@SORT@" else o for o in options]
            run("mksquashfs", tree, image, "-noappend", "-all-root", "-no-xattrs", "-no-progress",
                "-quiet", *args, env={**os.environ, "SOURCE_DATE_EPOCH": "1700000000"})
            append_hash_tree(image, salt)
            images.append(image)
        delta = scratch / "settings.zst"
        run("zstd", "-q", "-f", "-3", "--long=27", f"--patch-from={images[0]}", images[1],
            "-o", delta)
        rows.append((label, images[1].stat().st_size, delta.stat().st_size))
    return rows


def board_times(pair: Pair, key: Path) -> dict[str, dict[str, object]]:
    found: dict[str, dict[str, object]] = {}
    for mode in ("delta", "full"):
        run(FLEET, "lab", "up", "--board", "qemu-virt-arm64", "--disk", pair.base_disk,
            "--name", BOARD)
        try:
            started = time.monotonic()
            extra = ["--full"] if mode == "full" else []
            out = run(FLEET, "update", BOARD, pair.target, "--trust", key.with_suffix(".pub"),
                      *extra, "--json")
            result = json.loads(out)
            found[mode] = {
                "seconds": time.monotonic() - started,
                "outcome": result["outcome"],
                "method": result["method"],
                "transfers": result["transfers"],
            }
        finally:
            run(FLEET, "lab", "down", BOARD)
    return found


def ratio(part: int, whole: int) -> str:
    return f"{100 * part / whole:6.2f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="folder for builds (kept, reused)")
    parser.add_argument("--methods", action="store_true", help="also bsdiff and xdelta3")
    parser.add_argument("--settings", action="store_true", help="squashfs settings table")
    parser.add_argument("--no-board", action="store_true", help="skip the board times")
    args = parser.parse_args()
    logging.getLogger("paramiko").setLevel(logging.CRITICAL)
    work = args.work or Path(tempfile.mkdtemp(prefix="fleet-bench-delta-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("FLEET_LAB_DIR", str(work / "lab"))
    os.environ.setdefault("FLEET_STORE", str(work / "store"))
    key = work / "keys/release.sec"
    if not key.exists():
        run(FLEET, "keys", "generate", "--out", work / "keys", "--name", "release")
    scratch = work / "scratch"
    scratch.mkdir(exist_ok=True)
    store = Path(os.environ["FLEET_STORE"])
    failed = False
    for pair in pairs(work, key):
        full = full_bytes(pair.target)
        target: Manifest = load_manifest(pair.target)
        started = time.monotonic()
        delta = fleet_delta(pair, store)
        made_s = time.monotonic() - started
        delta_total = sum(delta.values())
        rsync = rsync_rootfs(pair, scratch)
        rootfs = target.payload("rootfs").size
        print(f"== {pair.name}: {pair.base.parent.name} -> {pair.target.parent.name}")
        print(f"  full release        {full:>10} bytes  100.00%")
        print(f"  fleet delta (zstd)  {delta_total:>10} bytes  {ratio(delta_total, full)}"
              f"   (boot {delta['boot']}, rootfs {delta['rootfs']}; made in {made_s:.1f} s)")
        # What fleet update sends: a payload whose delta is over WORTH of it goes whole.
        sends = sum(
            delta[p.name] if delta[p.name] <= WORTH * p.size else p.size for p in target.payloads
        )
        print(f"  fleet update sends  {sends:>10} bytes  {ratio(sends, full)}")
        print(f"  rsync of rootfs     {rsync:>10} bytes  {ratio(rsync, full)}"
              f"   (fleet's rootfs delta: {ratio(delta['rootfs'], rsync)} of rsync's)")
        print(f"  rootfs alone        {rootfs:>10} bytes; delta {ratio(delta['rootfs'], rootfs)}")
        if args.methods:
            for method, sizes in other_methods(pair, scratch).items():
                if sizes:
                    total = sum(sizes.values())
                    print(f"  {method:<19} {total:>10} bytes  {ratio(total, full)}"
                          f"   (boot {sizes['boot']}, rootfs {sizes['rootfs']})")
        if pair.name == "one-line" and sends >= TARGET_SHARE * full:
            print(f"  MISSED: the one-line change is over {TARGET_SHARE:.0%} of the release")
            failed = True
        if not args.no_board:
            times = board_times(pair, key)
            for mode, t in times.items():
                per = ", ".join(
                    f"{x['payload']} {x['method']} {x['bytes']} B {x['seconds']:.2f} s"
                    for x in t["transfers"]
                )
                print(f"  board, {mode:<5}: fleet update {t['seconds']:.1f} s, "
                      f"{t['outcome']} by {t['method']} ({per})")
            apply_s = sum(float(x["seconds"]) for x in times["delta"]["transfers"])
            write_s = sum(float(x["seconds"]) for x in times["full"]["transfers"])
            print(f"  board transfer time, delta / full: {apply_s:.2f} s / {write_s:.2f} s"
                  f" = {apply_s / write_s:.2f}")
        if args.settings and pair.name == "one-line":
            print("  squashfs settings (the one-line pair rebuilt from its trees):")
            print(f"    {'settings':<50} {'full rootfs':>12} {'delta':>10}")
            for label, size, dsize in settings_table(pair, scratch):
                print(f"    {label:<50} {size:>12} {dsize:>10}")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
