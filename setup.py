"""Ships the top-level boards/ and examples/ folders inside the wheel as fleet/_data/.

They stay at the top of the checkout (the design's layout, and where a user looks for
them); setuptools can only package files under a package, so the build copies them in.
An editable install needs no copy: fleet.data_dir() falls back to the checkout.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

DATA = ("boards", "examples")
# Build output and pins that may lie in a checkout's example after someone built it.
_SKIP = shutil.ignore_patterns(".*", "out", "build", "cache", "__pycache__", "*.pyc", "fleet.lock")


class BuildPyWithData(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        for name in DATA:
            target = Path(self.build_lib) / "fleet" / "_data" / name
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(Path(__file__).parent / name, target, ignore=_SKIP)


setup(cmdclass={"build_py": BuildPyWithData})
