"""One read transfer as a state machine, without sockets: the server feeds it ACKs and
timeouts, and sends what it returns. Blocks are counted in full internally and sent
modulo 2**16: a file longer than 65535 blocks rolls the counter over to 0, as tftpd-hpa
does and as U-Boot (tftp.c's block wrap offset), curl and tftp-hpa's client expect.

With windowsize W (RFC 7440) up to W blocks go out before an ACK is awaited; an ACK of
block n means every block up to n arrived, and the next window starts after n (an ACK
inside the window is the client saying the rest was lost). With W = 1 this is RFC 1350's
lock-step, and a duplicate ACK is ignored rather than answered (RFC 1123 4.2.3.1: the
Sorcerer's Apprentice bug)."""

from __future__ import annotations

from dataclasses import dataclass

from fleet.netboot import packets
from fleet.netboot.options import Negotiated

MAX_RETRIES = 5


@dataclass
class Outcome:
    done: bool = False
    failed: str | None = None


class Transfer:
    def __init__(self, data: bytes, options: Negotiated) -> None:
        self.view = memoryview(data)
        self.blksize, self.window = options.blksize, options.windowsize
        self.timeout = options.timeout
        self.blocks = len(data) // self.blksize + 1  # the last is short, maybe empty
        self.oack = options.oack
        self.acked = 0  # every block up to this one has arrived
        self.sent = 0  # the highest block sent
        self.retries = 0
        self.started = self.oack is None
        self.outcome = Outcome()
        self.sent_bytes = 0

    # -------------------------------------------------------------- what to send

    def block(self, n: int) -> tuple[bytes, memoryview]:
        start = (n - 1) * self.blksize
        return packets.data_header(n), self.view[start : start + self.blksize]

    def first(self) -> list[tuple[bytes, memoryview]]:
        if not self.started:
            return [(packets.oack(self.oack or {}), memoryview(b""))]
        return self._window()

    def _window(self) -> list[tuple[bytes, memoryview]]:
        last = min(self.acked + self.window, self.blocks)
        out = [self.block(n) for n in range(self.acked + 1, last + 1)]
        self.sent = max(self.sent, last)
        return out

    # ------------------------------------------------------------- what comes in

    def on_ack(self, number: int) -> list[tuple[bytes, memoryview]]:
        if self.window == 1 and self.sent == self.acked + 1 and number == self.sent & 0xFFFF:
            # Lock-step's next block, the hot path of every RFC 1350 client (a Pi's ROM,
            # most U-Boot setups): none of the window bookkeeping below.
            self.acked, self.retries = self.sent, 0
            if self.acked >= self.blocks:
                self.outcome.done = True
                return []
            self.sent += 1
            return [self.block(self.sent)]
        if not self.started:
            if number != 0:
                return []  # not the ACK of the OACK
            self.started, self.retries = True, 0
            return self._window()
        # the full block number this 16-bit one stands for, within what was sent
        ahead = (number - self.acked) & 0xFFFF
        if ahead == 0 or self.acked + ahead > self.sent:
            return []  # a duplicate, or a stray
        self.acked += ahead
        self.retries = 0
        if self.acked >= self.blocks:
            self.outcome.done = True
            return []
        return self._window()

    def on_error(self, text: str) -> None:
        # a Pi 4 asks with tsize only to learn the size, and ends with "Early terminate"
        self.outcome.failed = f"client ended it: {text or 'no reason'}"

    def on_timeout(self) -> list[tuple[bytes, memoryview]]:
        self.retries += 1
        if self.retries > MAX_RETRIES:
            self.outcome.failed = f"no answer after {MAX_RETRIES} retries"
            return []
        return self.first() if not self.started else self._window()

    @property
    def delivered(self) -> int:
        return min(self.acked * self.blksize, len(self.view))
