"""The TFTP server: one thread, one epoll, a socket per transfer (its own port, the
transfer ID of RFC 1350) connected to its client. A slow or vanished client only ever
delays its own transfer: nothing blocks on a client, every wait is a deadline in the
loop. Requests are bounded per client address and in total.

What a client may read is decided by ``resolve`` (client address, requested path) ->
the bytes, or a Refusal; the server itself never touches the file system."""

from __future__ import annotations

import contextlib
import math
import select
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from fleet.netboot import packets
from fleet.netboot.options import MAX_BLKSIZE, negotiate
from fleet.netboot.paths import BadPath, clean
from fleet.netboot.transfer import Transfer

MAX_PER_CLIENT = 8
MAX_TRANSFERS = 256


class Refusal(Exception):
    """A request that gets an ERROR packet; ``code`` is the TFTP error code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


Resolver = Callable[[str, str], tuple[str, bytes]]  # (client ip, path) -> (board, bytes)


@dataclass
class _Active:
    sock: socket.socket
    client: tuple[str, int]
    board: str
    name: str
    transfer: Transfer
    started: float
    deadline: float = 0.0


class TftpServer:
    def __init__(
        self,
        resolve: Resolver,
        bind: str,
        port: int = 69,
        log: Callable[[str], None] = print,
        max_blksize: int = MAX_BLKSIZE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.resolve, self.log, self.max_blksize, self.clock = resolve, log, max_blksize, clock
        self.bind = bind
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((bind, port))
        self.port = self.sock.getsockname()[1]
        # epoll itself, not selectors: one packet per wake-up in lock-step, and the
        # selectors layer's bookkeeping was a measurable share of each one
        self.poll = select.epoll()
        self.main_fd = self.sock.fileno()
        self.poll.register(self.main_fd, select.EPOLLIN)
        self.active: dict[int, _Active] = {}
        self.stopping = False
        self.transfers = 0  # finished, for tests and the summary

    # ------------------------------------------------------------------ loop

    def stop(self) -> None:
        self.stopping = True

    def step(self, longest: float) -> None:
        # Called once per datagram in lock-step: it does no more than it must per wake.
        active = self.active
        wait = longest
        soonest = math.inf
        if active:
            soonest = min(a.deadline for a in active.values())
            wait = min(longest, max(0.0, soonest - self.clock()))
        main = self.main_fd
        for fd, _ in self.poll.poll(wait):
            if fd == main:
                self._request()
            else:
                found = active.get(fd)
                if found is not None:
                    self._reply(found)
        # Deadlines only move later, and a new transfer's is a timeout away: nothing is
        # due before the soonest one seen above.
        if active and (now := self.clock()) >= soonest:
            for a in [a for a in active.values() if a.deadline <= now]:
                self._send(a, a.transfer.on_timeout())
                self._settle(a)

    def close(self) -> None:
        for a in list(self.active.values()):
            self._finish(a, "server stopped")
        self.poll.close()
        self.sock.close()

    # -------------------------------------------------------------- requests

    def _request(self) -> None:
        try:
            raw, client = self.sock.recvfrom(packets.MAX_REQUEST + 1)
        except OSError:
            return
        ip = client[0]
        try:
            request = packets.parse_request(raw)
        except packets.BadPacket as exc:
            self._refuse(client, packets.ILLEGAL, str(exc), "?")
            return
        if request.write:
            self._refuse(client, packets.ACCESS, "this server is read-only", request.name)
            return
        if request.mode.lower() != "octet":
            self._refuse(client, packets.ILLEGAL, "only octet mode is served", request.name)
            return
        if len(self.active) >= MAX_TRANSFERS or (
            sum(1 for a in self.active.values() if a.client[0] == ip) >= MAX_PER_CLIENT
        ):
            self._refuse(client, packets.NOT_DEFINED, "too many transfers", request.name)
            return
        try:
            path = clean(request.name)
            board, data = self.resolve(ip, path)
        except BadPath as exc:
            self._refuse(client, packets.ACCESS, f"refused path: {exc}", request.name)
            return
        except Refusal as exc:
            self._refuse(client, exc.code, str(exc), request.name)
            return
        except Exception as exc:  # a fault in fleet must not stop every other board's boot
            self._refuse(client, packets.NOT_DEFINED, f"internal error ({exc!r})", request.name)
            return
        options = negotiate(request.options, len(data), self.max_blksize)
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        except OSError as exc:  # out of file descriptors: this client asks again later
            self._refuse(client, packets.NOT_DEFINED, f"server busy ({exc.strerror})", path)
            return
        try:
            sock.bind((self.bind, 0))
            sock.connect(client)
        except OSError as exc:
            sock.close()
            self._refuse(client, packets.NOT_DEFINED, f"cannot answer ({exc.strerror})", path)
            return
        sock.setblocking(False)
        active = _Active(sock, client, board, path, Transfer(data, options), self.clock())
        self.active[sock.fileno()] = active
        self.poll.register(sock.fileno(), select.EPOLLIN)
        self._send(active, active.transfer.first())

    def _refuse(self, client: tuple[str, int], code: int, message: str, name: str) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendto(packets.error(code, message), client)
        self.log(f"{client[0]} {name!r} refused: {message}")

    # ------------------------------------------------------------- transfers

    def _reply(self, a: _Active) -> None:
        # One datagram per wake-up: epoll is level-triggered, so anything else queued
        # wakes the loop again, and the lock-step case pays no failed recv.
        try:
            raw = a.sock.recv(2048)
        except BlockingIOError:
            return
        except OSError as exc:  # ICMP port unreachable: the client has gone
            a.transfer.outcome.failed = f"client unreachable ({exc.strerror})"
            self._settle(a)
            return
        if len(raw) >= 4:
            opcode, number = packets.HEADER.unpack_from(raw)
            if opcode == packets.ACK:
                out = a.transfer.on_ack(number)
                if out:
                    self._send(a, out)
            elif opcode == packets.ERROR:
                a.transfer.on_error(packets.parse_reply(raw)[2])
        if a.transfer.outcome.done or a.transfer.outcome.failed:
            self._settle(a)

    def _send(self, a: _Active, out: list[tuple[bytes, memoryview]]) -> None:
        if out:
            a.deadline = self.clock() + a.transfer.timeout
        for header, payload in out:
            try:
                a.sock.sendmsg([header, payload])
            except BlockingIOError:
                break  # the socket buffer is full: the timeout resends
            except OSError as exc:
                a.transfer.outcome.failed = f"send failed ({exc.strerror})"
                break

    def _settle(self, a: _Active) -> None:
        outcome = a.transfer.outcome
        if outcome.done:
            self._finish(a, "ok")
        elif outcome.failed:
            self._finish(a, outcome.failed)

    def _finish(self, a: _Active, result: str) -> None:
        self.poll.unregister(a.sock.fileno())
        del self.active[a.sock.fileno()]
        a.sock.close()
        self.transfers += 1
        seconds = max(self.clock() - a.started, 1e-6)
        sent = a.transfer.delivered
        rate = sent / seconds / (1 << 20)
        self.log(
            f"{a.client[0]} board={a.board} file={a.name} bytes={sent} "
            f"seconds={seconds:.3f} rate={rate:.1f}MiB/s blksize={a.transfer.blksize} "
            f"window={a.transfer.window} {result}"
        )
