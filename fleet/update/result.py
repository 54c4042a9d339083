"""What an update reports: one outcome per board, with the reason in words."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any


class Outcome(StrEnum):
    UPDATED = "updated"
    ROLLED_BACK = "rolled-back"
    REFUSED = "refused"
    UNREACHABLE = "unreachable"
    # A rollout's board that already runs the release, committed and healthy.
    SKIPPED = "skipped"


# Exit codes of `fleet update`, so a script can tell the outcomes apart without --json.
EXIT_CODES = {
    Outcome.UPDATED: 0,
    Outcome.ROLLED_BACK: 10,
    Outcome.REFUSED: 11,
    Outcome.UNREACHABLE: 12,
    Outcome.SKIPPED: 0,
}

# Reasons of a rollback, as the host tells them apart from the board's trial record.
HEALTH_FAILED = "health failed"
BOOT_FAILED = "boot failed"
# rpi-tryboot: `try` asked for the firmware's one-shot trial, and the board came back on
# its old slot as a normal boot, the trial never started.
TRYBOOT_NOT_HONOURED = "tryboot flag not honoured"
TIMEOUT = "timeout"
# Unreachable because the board presents another host key than the one pinned: never
# retried (a re-flashed board, or someone impersonating it).
HOST_KEY_CHANGED = "host key changed"


@dataclass(frozen=True)
class Transfer:
    """How one payload reached the board."""

    payload: str
    method: str  # "delta" (rebuilt on the board from its running slot) or "full"
    bytes: int
    seconds: float
    ok: bool  # the board wrote it, read it back and it matched the manifest
    why_full: str = ""  # for a full transfer: why no delta was sent, or why it failed


def join_methods(*methods: str) -> str:
    """The method of several transfers or attempts, each named "delta", "full", "mixed"
    or "" (nothing went in): "mixed" when both kinds did."""
    seen = {method for method in methods if method}
    if not seen:
        return ""
    return seen.pop() if len(seen) == 1 else "mixed"


@dataclass(frozen=True)
class UpdateResult:
    target: str
    outcome: Outcome
    reason: str  # why it was rolled back, refused or unreachable; "" when updated
    release: int
    version: str
    slot: str  # the slot the release was written to ("" if nothing was written)
    running_slot: str  # the slot the board runs at the end ("" if unknown)
    running_version: str
    seconds: float
    bytes_sent: int
    detail: str = ""  # the board's own words (trial record, refusal line)
    transfers: tuple[Transfer, ...] = ()

    @property
    def method(self) -> str:
        """ "delta", "full" or "mixed", by the payloads that went in; "" if none did."""
        return join_methods(*(t.method for t in self.transfers if t.ok))

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.outcome]

    def summary(self) -> str:
        head = f"{self.target}: {self.outcome.value}"
        if self.reason:
            head += f": {self.reason}"
        if self.outcome is Outcome.SKIPPED:
            return (
                f"{head}: already runs {self.version} (release {self.release}) from slot "
                f"{self.running_slot}"
            )
        if self.outcome is Outcome.UPDATED:
            return (
                f"{head}: runs {self.version} (release {self.release}) from slot "
                f"{self.running_slot}, committed"
            )
        if self.running_version:
            head += f"; runs {self.running_version} from slot {self.running_slot}"
        return head

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["outcome"] = self.outcome.value
        data["seconds"] = round(self.seconds, 2)
        data["method"] = self.method
        data["transfers"] = [{**asdict(t), "seconds": round(t.seconds, 2)} for t in self.transfers]
        return data
