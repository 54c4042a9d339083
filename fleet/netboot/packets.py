"""TFTP packets (RFC 1350, options RFC 2347). Requests and OACKs, a few per transfer,
go through tftpy's packet classes; DATA and ACK, the hot path, are packed here, with
no per-packet logging."""

from __future__ import annotations

import logging
import struct

from tftpy.TftpPacketFactory import TftpPacketFactory
from tftpy.TftpPacketTypes import TftpPacketOACK, TftpPacketRRQ, TftpPacketWRQ

RRQ, WRQ, DATA, ACK, ERROR, OACK = 1, 2, 3, 4, 5, 6
# error codes (RFC 1350, 2347)
NOT_DEFINED, NOT_FOUND, ACCESS, DISK_FULL, ILLEGAL, UNKNOWN_TID = 0, 1, 2, 3, 4, 5
OPTION_REFUSED = 8
HEADER = struct.Struct("!HH")
MAX_REQUEST = 512  # RFC 1350's packet; options fit in it too

# tftpy logs every field of every packet it decodes at DEBUG; fleet never wants that.
logging.getLogger("tftpy").setLevel(logging.WARNING)
_factory = TftpPacketFactory()


class BadPacket(Exception):
    pass


class Request:
    def __init__(self, write: bool, name: str, mode: str, options: dict[str, str]) -> None:
        self.write, self.name, self.mode, self.options = write, name, mode, options


def parse_request(raw: bytes) -> Request:
    """A read or write request, options lower-cased; BadPacket for anything else."""
    if len(raw) > MAX_REQUEST:
        raise BadPacket("request longer than 512 bytes")
    try:
        packet = _factory.parse(raw)
    except Exception as exc:  # tftpy raises TftpException, struct.error, UnicodeDecodeError
        raise BadPacket(f"malformed request ({exc})") from None
    if not isinstance(packet, TftpPacketRRQ | TftpPacketWRQ):
        raise BadPacket("not a request")
    options = {str(k).lower(): str(v) for k, v in packet.options.items()}
    return Request(isinstance(packet, TftpPacketWRQ), packet.filename, packet.mode, options)


def oack(options: dict[str, int]) -> bytes:
    packet = TftpPacketOACK()
    packet.options = {k: str(v) for k, v in options.items()}
    encoded: bytes = packet.encode().buffer
    return encoded


def data_header(block: int) -> bytes:
    return HEADER.pack(DATA, block & 0xFFFF)


def error(code: int, message: str) -> bytes:
    text = message.encode("ascii", "replace")[:200]
    return HEADER.pack(ERROR, code) + text + b"\0"


def parse_reply(raw: bytes) -> tuple[int, int, str]:
    """(opcode, block or error code, error text) of a client's ACK or ERROR."""
    if len(raw) < 4:
        raise BadPacket("short packet")
    opcode, number = HEADER.unpack_from(raw)
    text = ""
    if opcode == ERROR:
        text = raw[4:].split(b"\0", 1)[0].decode("ascii", "replace")[:200]
    return opcode, number, text
