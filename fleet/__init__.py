"""fleet: build, sign, flash, netboot and A/B-update apps on Raspberry Pi class ARM boards."""

from pathlib import Path

__version__ = "0.1.0"

# The repository root holds data the tool ships beside its code (board profiles, examples).
REPO_ROOT = Path(__file__).resolve().parent.parent
