"""fleet: build, sign, flash, netboot and A/B-update apps on Raspberry Pi class ARM boards."""

from pathlib import Path

__version__ = "0.1.0"

_PACKAGE = Path(__file__).resolve().parent

# The folder that holds the package: the checkout when fleet runs from one (tests and
# the Makefile use it), site-packages when installed. Data is found with data_dir().
REPO_ROOT = _PACKAGE.parent


def data_dir(name: str) -> Path:
    """The folder of data fleet ships beside its code: ``boards``, ``examples`` or
    ``device``.

    boards/ and examples/ sit at the top of the checkout, where users and the design
    look for them; a wheel carries copies in fleet/_data/ (setup.py). The copies win, so
    an installed fleet never reads a checkout that happens to lie beside site-packages.
    """
    if name == "device":
        return _PACKAGE / "device"
    packaged = _PACKAGE / "_data" / name
    return packaged if packaged.is_dir() else REPO_ROOT / name
