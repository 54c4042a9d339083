"""The board's state as its agent reports it (``/etc/fleet/agent status``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from fleet import ssh
from fleet.errors import RemoteError

AGENT = "/etc/fleet/agent"


@dataclass(frozen=True)
class SlotInfo:
    release: int | None
    version: str
    manifest_sha256: str | None


@dataclass(frozen=True)
class BoardStatus:
    raw: dict[str, Any]

    def _str(self, key: str) -> str:
        value = self.raw.get(key)
        return value if isinstance(value, str) else ""

    @property
    def board(self) -> str:
        return self._str("board")

    @property
    def boot_id(self) -> str:
        return self._str("boot_id")

    @property
    def running_slot(self) -> str:
        return self._str("running_slot")

    @property
    def default_slot(self) -> str:
        return self._str("default_slot")

    @property
    def trial_slot(self) -> str:
        return self._str("trial_slot")

    @property
    def health(self) -> str:
        return self._str("health")

    @property
    def last_trial(self) -> str:
        return self._str("last_trial")

    @property
    def floor(self) -> int:
        value = self.raw.get("floor")
        return value if isinstance(value, int) else 0

    @property
    def app_version(self) -> str:
        app = self.raw.get("app")
        return str(app.get("version", "")) if isinstance(app, dict) else ""

    @property
    def app_release(self) -> int | None:
        app = self.raw.get("app")
        value = app.get("release") if isinstance(app, dict) else None
        return value if isinstance(value, int) else None

    def slot(self, name: str) -> SlotInfo | None:
        slots = self.raw.get("slots")
        info = slots.get(name) if isinstance(slots, dict) else None
        if not isinstance(info, dict):
            return None
        release = info.get("release")
        sha = info.get("manifest_sha256")
        return SlotInfo(
            release if isinstance(release, int) else None,
            str(info.get("version", "")),
            sha if isinstance(sha, str) else None,
        )

    @property
    def delta_applier(self) -> bool:
        """The board's image carries fleet-delta (images before deltas do not)."""
        delta = self.raw.get("delta")
        return isinstance(delta, dict) and delta.get("applier") is True

    @property
    def memory_available_kib(self) -> int | None:
        delta = self.raw.get("delta")
        value = delta.get("memory_available_kib") if isinstance(delta, dict) else None
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def trial_pending(self) -> bool:
        return self.trial_slot not in ("", self.default_slot)

    @property
    def committed(self) -> bool:
        """Runs its default slot with no trial pending."""
        return self.running_slot == self.default_slot and not self.trial_pending


def parse_status(data: bytes, where: str) -> BoardStatus:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RemoteError(f"{where}: the agent's status is not JSON: {exc}") from exc
    if not isinstance(doc, dict) or "running_slot" not in doc:
        raise RemoteError(f"{where}: the agent's status lacks running_slot")
    return BoardStatus(doc)


def read_status(
    session: ssh.Session, timeout: float = 30.0, decided_within: int = 0
) -> BoardStatus:
    """The agent's status. With ``decided_within`` seconds, the board answers once this
    boot's health watcher has decided (or that time is up): one request instead of a poll.
    A board whose agent predates that verb is asked for its status at once."""
    where = f"{session.host}:{session.port}"
    if decided_within > 0:
        result = session.exec(
            f"{AGENT} await-decision {decided_within}", timeout=timeout + decided_within
        )
        said = result.stderr.decode(errors="replace")
        if result.exit_code == 0:
            return parse_status(result.stdout, where)
        if "not one of the agent's verbs" not in said and "usage: agent" not in said:
            message = said.strip() or f"exit {result.exit_code}"
            raise RemoteError(f"{where}: agent await-decision failed: {message.splitlines()[-1]}")
    result = session.exec(f"{AGENT} status", timeout=timeout)
    if result.exit_code != 0:
        message = result.stderr.decode(errors="replace").strip() or f"exit {result.exit_code}"
        raise RemoteError(f"{where}: agent status failed: {message.splitlines()[-1]}")
    return parse_status(result.stdout, where)
