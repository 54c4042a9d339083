"""A new app folder from one of fleet's example apps: ``fleet init``.

The example is copied with its name replaced by the new app's, so the result builds
and runs as it is. Nothing already in the folder is overwritten, and the files appear
only once all of them are written and the new fleet.toml has been loaded back.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from fleet import data_dir
from fleet.errors import ConfigError, UsageError
from fleet.project import LOCK_FILE, PROJECT_FILE, load_project

EXAMPLES = data_dir("examples")
TEMPLATES = {"c": "hello-c", "go": "hello-go"}
# Build output and caches that may sit in an example folder after someone built it.
_SKIP_DIRS = {"out", "build", "cache", "__pycache__"}


@dataclass(frozen=True)
class Scaffolded:
    root: Path
    name: str
    language: str
    files: tuple[str, ...]  # relative to root, sorted


def default_name(folder: Path) -> str:
    """An app name from a folder name: lowercase, other characters become '-'."""
    name = re.sub(r"[^a-z0-9-]+", "-", folder.resolve().name.lower()).strip("-")[:63]
    return name or "app"


def template_files(template: Path) -> list[Path]:
    files = []
    for folder, dirs, names in os.walk(template):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in _SKIP_DIRS)
        for name in sorted(names):
            # A lock pins the example's own package versions; a new app makes its own.
            if not name.startswith(".") and name != LOCK_FILE:
                files.append((Path(folder) / name).relative_to(template))
    return files


def scaffold(folder: Path, language: str = "c", name: str | None = None) -> Scaffolded:
    if language not in TEMPLATES:
        raise UsageError(f"unknown language {language!r}: choose one of {', '.join(TEMPLATES)}")
    template = EXAMPLES / TEMPLATES[language]
    if not (template / PROJECT_FILE).is_file():
        raise UsageError(f"the example app {template} is missing from this fleet installation")
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{folder} exists and is not a folder")
    if (folder / PROJECT_FILE).exists():
        raise UsageError(f"{folder} already has a {PROJECT_FILE}; refusing to overwrite it")
    name = name or default_name(folder)
    files = template_files(template)
    for relative in files:
        if (folder / relative).exists():
            raise UsageError(f"{folder / relative} already exists; refusing to overwrite it")
    # On failure, remove the folders made here, and only those.
    made = next(
        (p for p in [*reversed(folder.absolute().parents), folder.absolute()] if not p.exists()),
        None,
    )
    folder.mkdir(parents=True, exist_ok=True)
    try:
        _fill(folder, template, files, TEMPLATES[language], name)
    except BaseException:
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
        raise
    return Scaffolded(folder, name, language, tuple(str(f) for f in files))


def _fill(folder: Path, template: Path, files: list[Path], old_name: str, name: str) -> None:
    with tempfile.TemporaryDirectory(prefix=".fleet-init-", dir=folder) as tmp:
        stage = Path(tmp)
        for relative in files:
            source = template / relative
            target = stage / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(source.read_text().replace(old_name, name))
            shutil.copymode(source, target)
        try:
            load_project(stage)
        except ConfigError as exc:
            raise UsageError(
                f"cannot make an app named {name!r}: {str(exc).split(': ', 2)[-1]} "
                "(choose another with --name)"
            ) from exc
        for relative in files:
            (folder / relative).parent.mkdir(parents=True, exist_ok=True)
            os.replace(stage / relative, folder / relative)
