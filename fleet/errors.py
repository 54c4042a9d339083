"""The exception tree. Errors are translated where they enter fleet and mapped to an
exit code and a one-line message by the single handler in ``fleet.cli.main``."""

from __future__ import annotations


class FleetError(Exception):
    """Base of every error fleet reports to a user. ``str(err)`` is the one-line message."""

    exit_code = 1


class UsageError(FleetError):
    """Bad input from the user: a wrong option, a missing file, a malformed config."""

    exit_code = 2


class ConfigError(UsageError):
    """A TOML file (board profile, fleet.toml, inventory, settings) is wrong."""


class ProgramError(FleetError):
    """An external program failed or is missing."""

    exit_code = 3


class BuildError(FleetError):
    """The build cannot produce a correct image (wrong ELF, missing library, too big)."""

    exit_code = 4


class ReleaseError(FleetError):
    """A release on disk is malformed, incomplete or does not verify."""

    exit_code = 5


class FlashError(FleetError):
    """Flashing refused or failed; the message says what state the device is in."""

    exit_code = 6


class LabError(FleetError):
    """A virtual or lab board cannot be started, reached or controlled."""

    exit_code = 7


class RemoteError(FleetError):
    """A board answered badly, refused, or could not be reached over SSH."""

    exit_code = 8


class HostKeyError(RemoteError):
    """A board presents a host key other than the pinned one, or one not pinned at all."""
