"""A scripted TFTP client for tests: replays what boards send (options, a Pi 4's
tsize probe and early abort, windowed ACKs as U-Boot's tftpwindowsize sends them, a
client that stops answering) and returns what the server sent, byte for byte."""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field

RRQ, WRQ, DATA, ACK, ERROR, OACK = 1, 2, 3, 4, 5, 6


@dataclass
class Reply:
    data: bytes = b""
    oack: dict[str, str] = field(default_factory=dict)
    error: tuple[int, str] | None = None
    blocks: list[int] = field(default_factory=list)  # wire block numbers, in order


def request(name: bytes, options: dict[str, str] | None = None, opcode: int = RRQ) -> bytes:
    packet = struct.pack("!H", opcode) + name + b"\0octet\0"
    for k, v in (options or {}).items():
        packet += k.encode() + b"\0" + v.encode() + b"\0"
    return packet


def _split(raw: bytes) -> dict[str, str]:
    parts = raw.split(b"\0")[:-1]
    return {parts[i].decode(): parts[i + 1].decode() for i in range(0, len(parts) - 1, 2)}


class Client:
    def __init__(
        self, port: int, host: str = "127.0.0.1", timeout: float = 3.0, source: str | None = None
    ) -> None:
        self.server = (host, port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(timeout)
        self.sock.bind((source or host, 0))  # any 127/8 address stands for another board
        self.peer: tuple[str, int] | None = None

    def close(self) -> None:
        self.sock.close()

    def send_raw(self, packet: bytes) -> tuple[int, bytes]:
        """Send a raw request and return the first answer's opcode and body."""
        self.sock.sendto(packet, self.server)
        raw, self.peer = self.sock.recvfrom(70000)
        return struct.unpack_from("!H", raw)[0], raw[2:]

    def _ack(self, block: int) -> None:
        assert self.peer is not None
        self.sock.sendto(struct.pack("!HH", ACK, block & 0xFFFF), self.peer)

    def fetch(
        self,
        name: str,
        options: dict[str, str] | None = None,
        *,
        abort_after_oack: bool = False,
        stop_after_blocks: int | None = None,
        drop_block: int | None = None,
    ) -> Reply:
        reply = Reply()
        opcode, body = self.send_raw(request(name.encode(), options))
        blksize, window = 512, 1
        if opcode == ERROR:
            code = struct.unpack_from("!H", body)[0]
            reply.error = (code, body[2:].split(b"\0")[0].decode())
            return reply
        if opcode == OACK:
            reply.oack = _split(body)
            blksize = int(reply.oack.get("blksize", 512))
            window = int(reply.oack.get("windowsize", 1))
            assert self.peer is not None
            if abort_after_oack:  # what a Pi 4's bootloader does after learning tsize
                self.sock.sendto(struct.pack("!HH", ERROR, 0) + b"Early terminate\0", self.peer)
                return reply
            self._ack(0)
            opcode, body = self._next()
        expected, chunks, dropped, nacked = 1, [], False, False
        while True:
            assert opcode == DATA, (opcode, body[:40])
            block = struct.unpack_from("!H", body)[0]
            reply.blocks.append(block)
            payload = body[2:]
            if drop_block is not None and expected == drop_block and not dropped:
                dropped = True  # lost on the wire: the rest of the window is out of order
            elif block == expected & 0xFFFF:
                nacked = False
                chunks.append(payload)
                last = len(payload) < blksize
                if stop_after_blocks is not None and expected >= stop_after_blocks:
                    reply.data = b"".join(chunks)
                    return reply  # and never answers again
                if last or expected % window == 0:
                    self._ack(expected)
                if last:
                    reply.data = b"".join(chunks)
                    return reply
                expected += 1
            elif dropped and not nacked:
                # out of order after a loss: ACK what arrived in order, once (RFC 7440)
                self._ack(expected - 1)
                nacked = True
            opcode, body = self._next()

    def resume(self, block: int, blksize: int = 512) -> bytes:
        """After fetch(stop_after_blocks=N): ACK block N and take the rest, lock-step."""
        chunks, expected = [], block + 1
        self._ack(block)
        while True:
            opcode, body = self._next()
            assert opcode == DATA, (opcode, body[:40])
            if struct.unpack_from("!H", body)[0] != expected & 0xFFFF:
                continue
            chunks.append(body[2:])
            self._ack(expected)
            if len(body) - 2 < blksize:
                return b"".join(chunks)
            expected += 1

    def _next(self) -> tuple[int, bytes]:
        raw, peer = self.sock.recvfrom(70000)
        assert peer == self.peer, "a packet from another transfer ID"
        return struct.unpack_from("!H", raw)[0], raw[2:]
