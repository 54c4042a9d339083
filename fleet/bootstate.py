"""The A/B boot state of a uboot-ab board, as the bootloader and the on-board agent keep
it on partition 1 (FAT): two copies, ``fleet/bootstate.1`` and ``fleet/bootstate.2``.

Each copy is exactly ``SIZE`` bytes in U-Boot's ``env export -c`` form: a CRC32 (zlib's,
little-endian) of the remaining ``SIZE - 4`` bytes, then ``name=value`` pairs each ended
by a NUL, then NUL padding. U-Boot checks the CRC with ``env import -c`` and writes with
``env export -c``; the agent writes the same bytes with busybox (``gzip``'s trailer holds
the same CRC32). The rules, shared by the boot script, the agent and this module:

- a copy is valid when it is SIZE bytes (or more) and its CRC matches;
- the valid copy with the higher ``fleet_seq`` (hexadecimal, as U-Boot's ``setexpr``
  counts) is current; with neither valid the state is the default one: slot A is the
  default, nothing is on trial, no floor beyond the running release;
- every write goes to the copy that is not current, with ``fleet_seq`` one higher, so a
  write cut by a power loss leaves the current copy as it was.

This module is the host's reader and writer (tests inspect a board's disk with it) and the
reference the shell and U-Boot sides are tested against.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, replace

SIZE = 0x200
COPIES = ("fleet/bootstate.1", "fleet/bootstate.2")
SLOTS = ("A", "B")
VARS = (
    "fleet_seq",
    "fleet_default",
    "fleet_trial",
    "fleet_tries",
    "fleet_floor",
    "fleet_slot_A",
    "fleet_slot_B",
    "fleet_last",
)


class BootStateError(ValueError):
    """A copy that is not a valid boot state (wrong size, CRC, or contents)."""


@dataclass(frozen=True)
class BootState:
    seq: int = 0
    default: str = "A"
    trial: str = ""  # "" or the slot on trial (never the default)
    tries: int = 0  # boot attempts the trial has left
    floor: int = 0  # release number of the last commit: installs must be above it
    slot_a: str = ""  # "RELEASE:VERSION:MANIFEST_SHA256" of a verified install, "" = unbootable
    slot_b: str = ""
    last: str = ""  # the last rollback or fallback, in words

    def slot_info(self, slot: str) -> str:
        return self.slot_a if slot == "A" else self.slot_b

    def pending(self) -> bool:
        return self.trial in SLOTS and self.trial != self.default

    def next_boot(self) -> tuple[BootState, str, bool]:
        """What the boot script does: (state after this boot, slot booted, whether the
        state was written). A write that fails means the default boots instead."""
        if not self.pending():
            return self, self.default, False
        if self.tries > 0:
            return replace(self, seq=self.seq + 1, tries=self.tries - 1), self.trial, True
        fallen = replace(self, seq=self.seq + 1, trial="", last=f"fallback {self.trial}")
        return fallen, self.default, True


def encode(state: BootState) -> bytes:
    values = {
        "fleet_seq": f"{state.seq:x}",
        "fleet_default": state.default,
        "fleet_trial": state.trial,
        "fleet_tries": f"{state.tries:x}",
        "fleet_floor": str(state.floor),
        "fleet_slot_A": state.slot_a,
        "fleet_slot_B": state.slot_b,
        "fleet_last": state.last,
    }
    # U-Boot leaves empty variables out; so do we, so both write the same bytes.
    body = b"".join(f"{k}={v}".encode() + b"\0" for k, v in sorted(values.items()) if v)
    for value in values.values():
        if "\0" in value or "\n" in value:
            raise BootStateError(f"boot state value {value!r} holds a NUL or newline")
    if len(body) + 1 > SIZE - 4:
        raise BootStateError(f"boot state needs {len(body) + 1} bytes, copies hold {SIZE - 4}")
    body += bytes(SIZE - 4 - len(body))
    return struct.pack("<I", zlib.crc32(body)) + body


def decode(data: bytes) -> BootState:
    if len(data) < SIZE:
        raise BootStateError(f"boot state copy is {len(data)} bytes, not {SIZE}")
    data = data[:SIZE]
    (crc,) = struct.unpack("<I", data[:4])
    body = data[4:]
    if zlib.crc32(body) != crc:
        raise BootStateError("boot state copy has a bad CRC (torn or damaged)")
    values: dict[str, str] = {}
    for item in body.split(b"\0"):
        if not item:
            break
        name, sep, value = item.decode(errors="replace").partition("=")
        if sep:
            values[name] = value
    try:
        seq = int(values.get("fleet_seq", "0") or "0", 16)
        tries = int(values.get("fleet_tries", "0") or "0", 16)
        floor = int(values.get("fleet_floor", "0") or "0")
    except ValueError as exc:
        raise BootStateError(f"boot state copy holds a bad number: {exc}") from exc
    default = values.get("fleet_default", "A")
    return BootState(
        seq=seq,
        default=default if default in SLOTS else "A",
        trial=values.get("fleet_trial", ""),
        tries=tries,
        floor=floor,
        slot_a=values.get("fleet_slot_A", ""),
        slot_b=values.get("fleet_slot_B", ""),
        last=values.get("fleet_last", ""),
    )


def current(copies: tuple[bytes | None, bytes | None]) -> tuple[BootState, int | None]:
    """The current state from the two copies' bytes (None = missing) and which copy
    (0 or 1) it came from; (default state, None) when neither is valid."""
    best: tuple[BootState, int] | None = None
    for index, data in enumerate(copies):
        if data is None:
            continue
        try:
            state = decode(data)
        except BootStateError:
            continue
        if best is None or state.seq > best[0].seq:
            best = (state, index)
    if best is None:
        return BootState(), None
    return best


def write_target(source: int | None) -> int:
    """The copy (0 or 1) the next write goes to: never the current one."""
    return 0 if source in (None, 1) else 1
