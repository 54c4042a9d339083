"""One board's A/B update, step by step (DESIGN §3):

1. read the board's status (its profile, floor, running slot; nothing may be on trial);
2. verify the release on the host (signatures, payload hashes, board, floor);
3. send the manifest and signatures: the board verifies them itself and marks its
   inactive slot unbootable;
4. stream each payload into the inactive slot (the board hashes as it writes and
   checks against the signed manifest);
5. ``try``: the board marks the slot for a trial boot and reboots;
6. wait for the board to come back (a new SSH connection, the pinned host key) and for
   the trial to end: committed by the board's health watcher, or rolled back by the
   board or its bootloader on their own;
7. report updated / rolled-back (health failed, boot failed, timeout) / refused /
   unreachable.
"""

from __future__ import annotations

import io
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from fleet import ssh
from fleet.delta import store
from fleet.delta.choose import choose
from fleet.errors import FleetError, HostKeyError, ReleaseError, RemoteError
from fleet.release import (
    MANIFEST,
    SIGNATURES,
    Manifest,
    Payload,
    load_manifest,
    manifest_sha256,
    read_manifest_bytes,
)
from fleet.trust import signature_files, verify_release
from fleet.update import result as r
from fleet.update.status import AGENT, BoardStatus, read_status
from fleet.update.target import Target
from signing import SigningError, TrustSet, require_board, require_newer

Note = Callable[[str], None]
# (payload name, bytes sent so far, payload size)
StreamProgress = Callable[[str, int, int], None]

REFUSED_EXIT = 3  # the agent's exit code for a refusal
# The trial is polled every half second (fresh connections; each waits at most a few
# seconds for a board that is still rebooting), so the result is seen soon after the
# board decides, not up to 2 s later as when this was 2.0.
POLL = 0.5
CONNECT_TIMEOUT = 4.0
# An SSH server sends its banner as it accepts; silence past this while the board reboots
# (a forwarded port accepts for it) means try again, not wait out the whole handshake.
BANNER_TIMEOUT = 1.5
DECISION_WAIT = 60.0  # seconds the board may hold one status answer until its trial is decided
BOOT_ALLOWANCE = 120.0  # seconds for reboots on top of the release's health deadline


def _quiet(_: str) -> None:
    pass


def _no_progress(_name: str, _sent: int, _size: int) -> None:
    pass


def _no_step(_step: str) -> None:
    pass


@dataclass
class Options:
    trust: TrustSet | None  # None: leave every check to the board (testing its own checks)
    health_timeout: float | None = None  # None: the release's health deadline + allowance
    attempts: int = 1
    note: Note = _quiet
    progress: StreamProgress = _no_progress
    # Called before each step is taken (connect, verify, install-manifest, install NAME,
    # try, trial): a rollout's journal records it first.
    step: Note = _no_step
    # A board whose running, committed slot holds this very manifest is left alone.
    skip_current: bool = False
    # The caller verified the release once (a rollout): per board only its profile and
    # floor are checked here, not every payload hashed again.
    verified: bool = False
    # Send each payload as a delta against the board's running slot where the host holds
    # that release (fleet.delta; docs/delta.md); False: every payload in full.
    deltas: bool = True
    store: Path | None = None  # the release store (None: fleet.delta.store.store_root())


@dataclass
class _Run:
    target: Target
    release: Manifest
    started: float
    bytes_sent: int = 0
    slot: str = ""  # the slot being written and tried
    origin: str = ""  # the slot the board ran before
    transfers: list[r.Transfer] = field(default_factory=list)

    def result(
        self,
        outcome: r.Outcome,
        reason: str = "",
        status: BoardStatus | None = None,
        detail: str = "",
    ) -> r.UpdateResult:
        return r.UpdateResult(
            target=self.target.name,
            outcome=outcome,
            reason=reason,
            release=self.release.release,
            version=self.release.version,
            slot=self.slot,
            running_slot=status.running_slot if status else "",
            running_version=status.app_version if status else "",
            seconds=time.monotonic() - self.started,
            bytes_sent=self.bytes_sent,
            detail=detail,
            transfers=tuple(self.transfers),
        )


def manifest_upload(folder: Path) -> bytes:
    """manifest.json and signatures/*.sig as a tar, the form `agent install-manifest` reads."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        members = [(MANIFEST, read_manifest_bytes(folder))]
        # Every entry goes, not only *.sig: the board then judges the same set as the
        # host's policy (fleet.trust.read_signatures), junk included.
        for name, data in signature_files(folder).items():
            members.append((f"{SIGNATURES}/{name}", data))
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _board_words(raw: bytes) -> str:
    lines = [line for line in raw.decode(errors="replace").splitlines() if line.strip()]
    if not lines:
        return ""
    return lines[-1].removeprefix("refused: ").removeprefix("error: ")


def update(target: Target, folder: Path, options: Options) -> r.UpdateResult:
    """Update one board; every outcome is a result, only bad local input raises."""
    manifest = load_manifest(folder)
    run = _Run(target, manifest, time.monotonic())
    note = options.note
    options.step("connect")
    try:
        session = target.connect()
    except HostKeyError as exc:
        return run.result(r.Outcome.UNREACHABLE, r.HOST_KEY_CHANGED, detail=str(exc))
    except RemoteError as exc:
        return run.result(r.Outcome.UNREACHABLE, str(exc))
    target = target.after_first_contact()
    run.target = target
    with session:
        try:
            status = read_status(session)
        except RemoteError as exc:
            return run.result(r.Outcome.UNREACHABLE, str(exc))
        note(f"board {status.board} runs slot {status.running_slot}, release {status.app_release}")
        if options.skip_current and runs_manifest(status, manifest_sha256(folder)):
            return run.result(r.Outcome.SKIPPED, "", status, "already runs this release")
        if options.trust is not None:
            options.step("verify")
            # The board checks all of this again itself; the host checks first so a bad
            # release is refused before a byte is sent.
            note(f"verifying {folder} for board {status.board} (floor {status.floor})")
            try:
                verify_release(folder, options.trust, floor=status.floor, board=status.board)
            except ReleaseError as exc:
                return run.result(r.Outcome.REFUSED, f"host: {exc}", status)
        elif options.verified:
            options.step("verify")
            try:
                require_board(manifest.board, status.board)
                require_newer(manifest.release, status.floor)
            except SigningError as exc:
                return run.result(r.Outcome.REFUSED, f"host: {folder}: {exc}", status)
        if status.trial_pending or status.running_slot != status.default_slot:
            return run.result(
                r.Outcome.REFUSED,
                f"slot {status.trial_slot or status.running_slot} is on trial; "
                "wait for it to commit or roll back",
                status,
            )
        try:
            outcome = _install(session, run, folder, manifest, status, options)
        except RemoteError as exc:
            # A dropped stream leaves the slot unbootable on the board; a retry restarts.
            return run.result(r.Outcome.UNREACHABLE, f"lost the board during the install: {exc}")
        if outcome is not None:
            return outcome
        note(f"trial boot of slot {run.slot}")
        options.step("try")
        try:
            answer = session.exec(f"{AGENT} try {options.attempts}", timeout=30)
        except RemoteError as exc:
            # The board may have begun the trial reboot before its answer got out, so
            # neither outcome is known; it rolls back or commits on its own either way.
            return run.result(
                r.Outcome.UNREACHABLE,
                f"lost the board during `try` (it may be rebooting into slot {run.slot}; "
                f"see fleet status): {exc}",
            )
        if answer.exit_code != 0:
            words = _board_words(answer.stderr)
            return run.result(r.Outcome.REFUSED, f"board: {words}", status, words)
    options.step("trial")
    return _await_trial(run, status, _deadline(manifest, options), note)


def _deadline(manifest: Manifest, options: Options) -> float:
    if options.health_timeout is not None:
        return options.health_timeout
    return manifest.health.timeout + BOOT_ALLOWANCE


def runs_manifest(status: BoardStatus, sha: str) -> bool:
    """The board runs, committed and healthy, the slot that holds this manifest."""
    info = status.slot(status.running_slot)
    return (
        status.committed
        and info is not None
        and info.manifest_sha256 == sha
        and status.health == "healthy"
    )


def settle(target: Target, folder: Path, options: Options) -> r.UpdateResult | None:
    """A board a killed controller left after ``try`` (or while it was sent), brought to
    its outcome as its own boot state says: committed on the release (updated), rolled
    back (the trial record says why), or still on trial and then judged like any trial.
    None when the board shows no trial of this release: nothing bootable changed, and the
    caller starts the update again."""
    manifest = load_manifest(folder)
    sha = manifest_sha256(folder)
    run = _Run(target, manifest, time.monotonic())
    deadline = time.monotonic() + _deadline(manifest, options)
    status: BoardStatus | None = None
    problem = "no answer"
    # The board may be rebooting into (or out of) its trial right now.
    while status is None:
        try:
            with target.connect(timeout=CONNECT_TIMEOUT, banner_timeout=BANNER_TIMEOUT) as s:
                status = read_status(s)
        except RemoteError as exc:
            problem = str(exc)
            if time.monotonic() > deadline:
                return run.result(r.Outcome.UNREACHABLE, f"after the restart: {problem}")
            time.sleep(POLL)
    slot = next((n for n in ("A", "B") if (i := status.slot(n)) and i.manifest_sha256 == sha), "")
    mine = f"release={manifest.release} slot="
    if not slot:
        # The slot was taken by something else since, or never recorded as installed; a
        # trial record of this release still tells how its trial ended.
        if status.last_trial.startswith(mine) and status.committed:
            run.slot = status.last_trial.split()[1].removeprefix("slot=")
            run.origin = status.running_slot
            return _judge(run, status)
        return None
    run.slot = slot
    run.origin = "B" if slot == "A" else "A"
    if runs_manifest(status, sha):
        return run.result(r.Outcome.UPDATED, "", status, status.last_trial)
    if status.running_slot == slot or status.trial_slot == slot:
        options.note(f"slot {slot} is on trial: waiting for the board to decide")
        # A trial already running is judged at once; one still pending waits for its reboot.
        before = status if status.running_slot != slot else replace(status, raw={})
        return _await_trial(run, before, _deadline(manifest, options), options.note)
    if status.last_trial.startswith(f"{mine}{slot} "):
        done = _judge(run, status)
        if done is not None:
            return done
    return None


def _install(
    session: ssh.Session,
    run: _Run,
    folder: Path,
    manifest: Manifest,
    status: BoardStatus,
    options: Options,
) -> r.UpdateResult | None:
    upload = manifest_upload(folder)
    options.step("install-manifest")
    answer = session.exec(f"{AGENT} install-manifest", input=upload, timeout=60)
    run.bytes_sent += len(upload)
    if answer.exit_code != 0:
        words = _board_words(answer.stderr)
        return run.result(r.Outcome.REFUSED, f"board: {words}", status, words)
    options.note("the board checked the manifest and its signatures")
    run.origin = status.running_slot
    run.slot = "B" if status.running_slot == "A" else "A"
    base = _base_release(folder, status, options)
    for payload in manifest.payloads:
        path = folder / payload.file
        why_full = "--full" if not options.deltas else ""
        if options.deltas:
            why_full = _send_delta(session, run, payload, path, status, base, options)
            if not why_full:
                continue
        options.note(f"streaming {payload.name} ({payload.size} bytes) into slot {run.slot}")
        answer = _stream(session, run, payload.name, path, payload.size, None, options, why_full)
        if answer.exit_code != 0:
            words = _board_words(answer.stderr)
            return run.result(r.Outcome.REFUSED, f"board: {words}", status, words)
        options.note(f"{payload.name}: written, read back and matched by the board")
    return None


def _base_release(folder: Path, status: BoardStatus, options: Options) -> store.Kept | str:
    """The stored release the board's running slot holds, or why there is none. The
    release being sent is kept too, so the board's next update can be a delta against it."""
    if not options.deltas:
        return "--full"
    if not options.verified:  # a rollout keeps its release once, not per board
        try:
            store.keep(folder, options.store)
        except (OSError, store.StoreError) as exc:
            options.note(f"cannot keep {folder} in the release store: {exc}")
    if not status.delta_applier:
        return "the board's image has no delta applier"
    info = status.slot(status.running_slot)
    if info is None or not info.manifest_sha256:
        return "the board does not say which release its running slot holds"
    kept = store.find(info.manifest_sha256, options.store)
    if kept is None:
        return "the host does not hold the release in the board's running slot"
    return kept


def _send_delta(
    session: ssh.Session,
    run: _Run,
    payload: Payload,
    path: Path,
    status: BoardStatus,
    base: store.Kept | str,
    options: Options,
) -> str:
    """Send ``payload`` as a delta; "" when the board rebuilt it and it matched, else why
    it goes in full (a delta the board refused costs only its own bytes)."""
    if isinstance(base, str):
        return base
    picked = choose(
        base,
        payload.name,
        path,
        payload.sha256,
        payload.size,
        status.memory_available_kib,
        options.store,
    )
    if isinstance(picked, str):
        return picked
    base_size = base.manifest.payload(payload.name).size
    options.note(
        f"streaming {payload.name} as a delta ({picked.size} bytes for {payload.size}) "
        f"into slot {run.slot}"
    )
    answer = _stream(session, run, payload.name, picked.path, picked.size, base_size, options, "")
    if answer.exit_code == 0:
        options.note(f"{payload.name}: rebuilt from the delta, read back and matched by the board")
        return ""
    words = _board_words(answer.stderr) or f"exit {answer.exit_code}"
    options.note(f"{payload.name}: the board refused the delta ({words}); sending it in full")
    return f"the delta failed: {words}"


def _stream(
    session: ssh.Session,
    run: _Run,
    name: str,
    path: Path,
    size: int,
    base_size: int | None,
    options: Options,
    why_full: str,
) -> ssh.ExecResult:
    """One payload's bytes into the agent: ``install NAME``, or with the size of the
    running slot's payload ``install-delta NAME BASE_SIZE``; recorded as a transfer."""
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise ReleaseError(f"{path}: {exc.strerror}") from exc
    delta = base_size is not None
    command = f"{AGENT} install-delta {name} {base_size}" if delta else f"{AGENT} install {name}"
    options.step(f"install {name}")
    started = time.monotonic()

    def progress(sent: int) -> None:
        options.progress(name, sent, size)

    with handle:
        try:
            answer = session.upload_stream(command, handle, size, progress, timeout=60)
        except FleetError as exc:
            if isinstance(exc, RemoteError):
                raise
            raise ReleaseError(f"{path}: {exc}") from exc
    run.bytes_sent += size
    run.transfers.append(
        r.Transfer(
            payload=name,
            method="delta" if delta else "full",
            bytes=size,
            seconds=time.monotonic() - started,
            ok=answer.exit_code == 0,
            why_full=why_full,
        )
    )
    return answer


def _await_trial(run: _Run, before: BoardStatus, deadline_s: float, note: Note) -> r.UpdateResult:
    """Poll the board (fresh connections) until the trial has ended one way or another."""
    deadline = time.monotonic() + deadline_s
    note(f"waiting up to {deadline_s:.0f} s for the board to boot slot {run.slot} and decide")
    last: BoardStatus | None = None
    problem = "no answer"
    gave_up = False
    while True:
        time.sleep(POLL)
        left = deadline - time.monotonic()
        try:
            with run.target.connect(
                timeout=max(2.0, min(CONNECT_TIMEOUT, left)), banner_timeout=BANNER_TIMEOUT
            ) as session:
                status = read_status(
                    session,
                    timeout=max(5.0, min(30.0, left)),
                    decided_within=int(max(1.0, min(DECISION_WAIT, left))),
                )
                if status.boot_id != before.boot_id:
                    if last is None:
                        note(f"board answers again, on slot {status.running_slot}")
                    last = status
                    done = _judge(run, status)
                    if done is not None:
                        return done
                    if left <= 0 and not gave_up:
                        # The board still runs the trial undecided: end it now; the
                        # bootloader brings the old slot back.
                        gave_up = True
                        note(f"no decision after {deadline_s:.0f} s: rolling back")
                        session.exec(f"{AGENT} rollback host gave up after {deadline_s:.0f} s")
                        deadline = time.monotonic() + BOOT_ALLOWANCE
                        before = status
                        continue
        except RemoteError as exc:
            problem = str(exc)
        if time.monotonic() > deadline:
            if gave_up and last is not None:
                return run.result(
                    r.Outcome.ROLLED_BACK,
                    r.TIMEOUT,
                    last,
                    "the board did not come back after the rollback",
                )
            reason = f"no answer from the board within {deadline_s:.0f} s of the trial boot"
            return run.result(r.Outcome.UNREACHABLE, f"{reason} ({problem})", last)


def _judge(run: _Run, now: BoardStatus) -> r.UpdateResult | None:
    """The trial's outcome from the board's status after a reboot, or None (undecided)."""
    if now.running_slot == run.slot:
        if now.committed and now.app_version == run.release.version and now.health == "healthy":
            return run.result(r.Outcome.UPDATED, "", now, now.last_trial)
        return None  # the trial runs; its health watcher has not decided yet
    if now.running_slot != run.origin or now.trial_pending:
        return None
    record = now.last_trial
    mine = record.startswith(f"release={run.release.release} slot={run.slot} ")
    events = record.split()[3:] if mine else []
    if any(e.startswith("rollback:") for e in events):
        reason = r.HEALTH_FAILED if "health" in record else r.TIMEOUT
    elif "tryboot-not-honoured" in events:
        reason = r.TRYBOOT_NOT_HONOURED
    elif "booted" in events:
        reason = r.TIMEOUT  # the trial reached userspace but never decided: hung, reset
    else:
        reason = r.BOOT_FAILED
    return run.result(r.Outcome.ROLLED_BACK, reason, now, record)


def board_status(target: Target) -> BoardStatus:
    """The agent's status, plus the host key the board proved it holds (pinned or not,
    the connection already checked it against known_hosts)."""
    with target.connect() as session:
        state = read_status(session)
        raw = {**state.raw, "host_key": session.host_key_fingerprint()}
        return replace(state, raw=raw)
