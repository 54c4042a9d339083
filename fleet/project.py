"""fleet.toml: one user's app: its name and version, how to build it, how to run it on
the board and how to tell that it is healthy."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from fleet.errors import ConfigError
from fleet.schema import Table, load_toml

PROJECT_FILE = "fleet.toml"
LOCK_FILE = "fleet.lock"
LANGUAGES = ("c", "go", "command")
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


@dataclass(frozen=True)
class BuildRecipe:
    language: str  # "c", "go" or "command"
    sources: tuple[str, ...]  # globs relative to the project folder
    output: str  # the built program's file name (installed as /app/bin/NAME)
    flags: tuple[str, ...]  # extra compiler flags (C) or build flags (Go)
    command: str | None  # language = "command": a shell recipe with $CC, $GOARCH, $OUT set


@dataclass(frozen=True)
class Health:
    http: str | None  # an HTTP path on the app's port, e.g. /health
    command: str | None  # or a command run on the board; exit 0 = healthy
    timeout_s: int  # how long a trial boot may take to become healthy
    # A trial fails at once when the app has exited this many times before its first
    # passing check, instead of waiting out the timeout (0: only the timeout decides).
    max_exits: int
    # Each check gets this long (and never past the trial's deadline): a check that hangs
    # counts as failed instead of holding the trial open.
    check_timeout_s: int = 10


PULL_URL = re.compile(r"^https?://[A-Za-z0-9.:/_%~-]+$")
PULL_GROUP = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


@dataclass(frozen=True)
class Pull:
    """[pull] (docs/pull.md): where a board polls, and the timestamp keys it pins. The
    URL and group may be left to provisioning (fleet provision --pull-url); the keys are
    part of the signed image."""

    url: str | None
    group: str
    interval_s: int
    jitter_s: int
    timestamp_keys: tuple[Path, ...]
    # TLS for an https:// store: the image carries openssl (busybox's wget hands https to
    # `openssl s_client`, which checks the certificate) and Debian's CA certificates.
    https: bool = False
    ca_file: Path | None = None  # a private store's CA, added to the image's CA bundle


@dataclass(frozen=True)
class Project:
    root: Path
    name: str
    version: str
    release_number: int  # monotonic, for anti-rollback
    build: BuildRecipe
    run: str  # command line started on the board
    port: int  # the app's TCP port (forwarded by virtual boards)
    health: Health
    packages: tuple[str, ...]  # extra Debian packages the app needs at run time
    # [image] wifi: carry the board's WiFi (driver, firmware, client) or not; None: as
    # the board profile says (a Zero 2 W's always do).
    wifi: bool | None = None
    pull: Pull | None = None  # [pull]: the board polls a store for its updates

    @property
    def lock_path(self) -> Path:
        return self.root / LOCK_FILE


def load_project(folder: Path) -> Project:
    path = folder / PROJECT_FILE
    if not path.is_file():
        raise ConfigError(f"{path}: no such file (run 'fleet init {folder}' to make one)")
    top = Table(load_toml(path), str(path))
    app = top.table("app")
    build = top.table("build")
    run = top.table("run")
    health = top.table("health")
    name = app.str("name")
    if not _NAME.match(name):
        raise app.error("name", f"use lowercase letters, digits and '-', got {name!r}")
    language = build.choice("language", LANGUAGES)
    command = build.opt_str("command")
    if language == "command" and command is None:
        raise build.error("command", "missing (language = 'command' needs a recipe)")
    output = build.str("output", default=name)
    if "/" in output or output.startswith("."):
        raise build.error("output", f"must be a plain file name, got {output!r}")
    project = Project(
        root=folder.resolve(),
        name=name,
        version=app.str("version"),
        release_number=app.int("release", minimum=1),
        build=BuildRecipe(
            language=language,
            sources=tuple(build.str_list("sources")),
            output=output,
            flags=tuple(build.str_list("flags", default=[])),
            command=command,
        ),
        run=run.str("command"),
        port=run.int("port", minimum=1),
        health=Health(
            http=health.opt_str("http"),
            command=health.opt_str("command"),
            timeout_s=health.int("timeout", default=60, minimum=1),
            max_exits=health.int("max_exits", default=3, minimum=0),
            check_timeout_s=health.int("check_timeout", default=10, minimum=1),
        ),
        packages=tuple(top.str_list("packages", default=[])),
        wifi=_wifi_choice(top),
        pull=_pull(top, folder.resolve()),
    )
    if project.port > 65535:
        raise run.error("port", f"must be at most 65535, got {project.port}")
    if (project.health.http is None) == (project.health.command is None):
        raise health.error("http", "give exactly one of 'http' (a path) or 'command'")
    if project.health.http is not None and not project.health.http.startswith("/"):
        raise health.error("http", f"must be a path starting with '/', got {project.health.http!r}")
    for table in (top, app, build, run, health):
        table.reject_unknown()
    return project


def _pull(top: Table, root: Path) -> Pull | None:
    table = top.opt_table("pull")
    if table is None:
        return None
    url = table.opt_str("url")
    if url is not None and not PULL_URL.match(url):
        raise table.error("url", f"an http:// or https:// URL, no spaces or quotes: {url!r}")
    group = table.str("group", default="default")
    if not PULL_GROUP.match(group):
        raise table.error("group", f"lower-case letters, digits, '.', '_' and '-', got {group!r}")
    keys = tuple(root / k for k in table.str_list("timestamp_keys"))
    if not keys:
        raise table.error("timestamp_keys", "name at least one timestamp public key")
    https = table.bool("https", default=bool(url and url.startswith("https://")))
    if url and url.startswith("https://") and not https:
        raise table.error("https", "an https:// url needs https = true (openssl in the image)")
    ca_file = table.opt_str("ca_file")
    pull = Pull(
        url=url.rstrip("/") if url else None,
        group=group,
        interval_s=table.int("interval", default=300, minimum=1),
        jitter_s=table.int("jitter", default=60, minimum=0),
        timestamp_keys=keys,
        https=https,
        ca_file=root / ca_file if ca_file else None,
    )
    if pull.ca_file is not None and not https:
        raise table.error("ca_file", "is for https = true")
    table.reject_unknown()
    return pull


def _wifi_choice(top: Table) -> bool | None:
    image = top.opt_table("image")
    if image is None:
        return None
    choice = image.bool("wifi") if "wifi" in image.data else None
    image.reject_unknown()
    return choice
