"""The boot state format and rules shared by the U-Boot script, the agent and the host."""

from __future__ import annotations

import struct
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleet.bootstate import SIZE, BootState, BootStateError, current, decode, encode, write_target

pytestmark = pytest.mark.unit

INSTALLED = BootState(
    seq=7, default="A", floor=3, slot_a="3:3.0.0:" + "a" * 64, slot_b="4:4.0.0:" + "b" * 64
)


def test_copy_is_uboot_env_export_form() -> None:
    data = encode(INSTALLED)
    assert len(data) == SIZE
    (crc,) = struct.unpack("<I", data[:4])
    assert crc == zlib.crc32(data[4:])
    # Sorted name=value pairs, NUL ended, empty values left out (as U-Boot exports).
    assert data[4:].startswith(b"fleet_default=A\0fleet_floor=3\0fleet_seq=7\0fleet_slot_A=")
    assert b"fleet_trial" not in data
    assert decode(data) == INSTALLED


@given(st.integers(min_value=4, max_value=SIZE - 1), st.integers(min_value=1, max_value=255))
def test_any_damaged_byte_makes_the_copy_invalid(at: int, flip: int) -> None:
    data = bytearray(encode(INSTALLED))
    data[at] ^= flip
    with pytest.raises(BootStateError):
        decode(bytes(data))


def test_newest_valid_copy_wins_and_a_torn_one_is_ignored() -> None:
    old = encode(INSTALLED)
    new = encode(BootState(seq=8, default="B", floor=4))
    assert current((old, new)) == (decode(new), 1)
    torn = new[:20] + bytes(SIZE - 20)
    assert current((old, torn)) == (INSTALLED, 0)
    assert current((None, None)) == (BootState(), None)
    assert current((b"short", None)) == (BootState(), None)


def test_writes_never_go_to_the_current_copy() -> None:
    assert write_target(None) == 0
    assert write_target(0) == 1
    assert write_target(1) == 0


def test_no_trial_means_no_write_and_no_attempt_spent() -> None:
    after, slot, wrote = INSTALLED.next_boot()
    assert (after, slot, wrote) == (INSTALLED, "A", False)


def test_trial_spends_attempts_then_falls_back_by_itself() -> None:
    state = BootState(seq=1, default="A", trial="B", tries=2, slot_b="2:2:x")
    state, slot, wrote = state.next_boot()
    assert (slot, state.tries, wrote) == ("B", 1, True)
    state, slot, _ = state.next_boot()
    assert (slot, state.tries) == ("B", 0)
    state, slot, _ = state.next_boot()
    assert (slot, state.trial, state.last) == ("A", "", "fallback B")
    assert state.next_boot()[2] is False  # settled again: no more writes
