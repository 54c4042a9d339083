"""Whether to send a board a delta or the payload in full."""

from __future__ import annotations

from pathlib import Path

from fleet.delta.make import (
    MAX_WINDOW_LOG,
    MIN_WINDOW_LOG,
    Delta,
    DeltaUnavailable,
    ceil_log2,
    delta_for,
    window_log_for,
)
from fleet.delta.store import Kept
from fleet.errors import ReleaseError

# A delta larger than this share of its payload saves too little of the link to be
# worth the board's apply (decoding against its running slot): send the payload.
WORTH = 0.75
_MIB = 1 << 20


def choose(
    base: Kept | None,
    name: str,
    target_file: Path,
    target_sha: str,
    target_size: int,
    available_kib: int | None,
    root: Path | None = None,
) -> Delta | str:
    """The delta to send for payload ``name``, or the one-line reason to send it in full.
    ``base`` is the stored release in the board's running slot; ``available_kib`` the
    memory the board reports free. ``root`` defaults to the store ``base`` came from."""
    if base is None:
        return "the host does not hold the release in the board's running slot"
    try:
        base_payload = base.manifest.payload(name)
    except ReleaseError:
        return f"the board's running release has no {name} payload"
    if available_kib is None:
        return "the board does not report its free memory"
    # Checked before the delta is made, so a board too small for it costs no zstd run.
    try:
        window_log = window_log_for(max(base_payload.size, target_size))
    except DeltaUnavailable as exc:
        return str(exc)
    # The frame's window is never more than the output it reconstructs.
    window_log = min(window_log, max(MIN_WINDOW_LOG, ceil_log2(target_size)))
    reason = _memory(window_log, available_kib)
    if reason is not None:
        return reason
    base_file = base.payload(name)
    if base_file is None:
        return f"the host's store lacks the {name} payload of the board's running release"
    try:
        delta = delta_for(
            base_file,
            base_payload.sha256,
            target_file,
            target_sha,
            base.root if root is None else root,
        )
    except DeltaUnavailable as exc:
        return str(exc)
    # The frame's own window is what the board checks; a cached delta may come from
    # another zstd than the estimate above assumed.
    reason = _memory(delta.window_log, available_kib)
    if reason is not None:
        return reason
    if delta.size > WORTH * target_size:
        return (
            f"the delta ({delta.size} bytes) is not much smaller than the payload "
            f"({target_size} bytes)"
        )
    return delta


def _memory(window_log: int, available_kib: int) -> str | None:
    # The board's rule (cmd_install_delta in fleet/device/agent): its decoder takes a
    # window of at most the largest power of two within half its free memory, and
    # fleet-delta refuses a frame needing more. A delta it refuses is sent for nothing.
    allowed = MIN_WINDOW_LOG
    while allowed < MAX_WINDOW_LOG and (1 << (allowed + 1)) // 1024 <= available_kib // 2:
        allowed += 1
    if window_log <= allowed:
        return None
    have = available_kib // 1024
    want = -(-(2 << window_log) // _MIB)
    return f"the board has {have} MiB free; applying this delta needs {want} MiB"
