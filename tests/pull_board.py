"""A pull store and a board that pulls from it, on this machine: a folder store behind a
real nginx on loopback (fleet.pull.nginx) and the board's own pull script run in an agent
tree (tests/agent_tree.py), so every check the board makes is the board's code."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from fleet import trust as trustlib
from fleet.pull import publish as pub
from fleet.pull.store import DirStore
from tests.agent_tree import AgentTree

DAY = 86400


@dataclass
class Keys:
    release_sec: Path
    release_pub: Path
    timestamp_sec: Path
    timestamp_pub: Path


def make_keys(folder: Path) -> Keys:
    release = trustlib.generate_key(folder, "release")
    stamp = trustlib.generate_key(folder, "timestamp")
    return Keys(release.secret, release.public, stamp.secret, stamp.public)


def pulling_board(root: Path, keys: Keys, url: str, group: str = "lobby",
                  hostname: str = "board-1") -> AgentTree:
    tree = AgentTree(root, [keys.release_pub])
    pull_keys = tree.root / "etc/fleet/pull-keys"
    pull_keys.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(keys.timestamp_pub, pull_keys / "timestamp.pub")
    (tree.root / "proc/sys/kernel/hostname").write_text(hostname + "\n")
    set_pull(tree, url, group)
    return tree


def set_pull(tree: AgentTree, url: str, group: str) -> None:
    """Provisioning's partition-1 file, as fleet provision --pull-url writes it."""
    settings = tree.firmware / "fleet"
    import subprocess

    subprocess.run(["mount", "-o", "remount,rw", str(tree.firmware)], check=True)
    try:
        settings.mkdir(exist_ok=True)
        (settings / "pull").write_text(f"url={url}\ngroup={group}\ninterval=1\njitter=0\n")
    finally:
        subprocess.run(["mount", "-o", "remount,ro", str(tree.firmware)], check=True)


def publish(store: Path, release: Path, keys: Keys, group: str = "lobby", percent: int = 100,
            **kw: object) -> pub.Published:
    return pub.publish(
        DirStore(store), release, group, percent,
        [trustlib.load_secret_key(keys.release_sec)],
        trustlib.load_secret_key(keys.timestamp_sec),
        int(kw.pop("expires_s", 30 * DAY)),  # type: ignore[call-overload]
        int(kw.pop("timestamp_expires_s", DAY)),  # type: ignore[call-overload]
        **kw,  # type: ignore[arg-type]
    )
