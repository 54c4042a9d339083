"""Send one PXE DHCPDISCOVER, as a Raspberry Pi's boot ROM does (vendor class
PXEClient, BOOTP flags broadcast), on the interface given, and print the options of the
first reply as JSON (hex values), for the dnsmasq test. Run inside a network namespace."""

from __future__ import annotations

import json
import os
import socket
import struct
import sys


def discover(mac: bytes, xid: int) -> bytes:
    header = struct.pack("!BBBBIHHIIII", 1, 1, 6, 0, xid, 0, 0x8000, 0, 0, 0, 0)
    packet = header + mac + b"\0" * 10 + b"\0" * 192 + b"\x63\x82\x53\x63"
    vendor = b"PXEClient:Arch:00000:UNDI:002001"
    packet += bytes([53, 1, 1])  # DHCPDISCOVER
    packet += bytes([60, len(vendor)]) + vendor
    packet += bytes([93, 2, 0, 0])  # client architecture: 0, as the Pi ROM says
    packet += bytes([94, 3, 1, 2, 1])  # UNDI 2.1
    packet += bytes([97, 17, 0]) + b"\x01" * 16  # a client UUID, as PXE sends
    packet += bytes([55, 4, 1, 3, 43, 66, 255])
    return packet


def options(reply: bytes) -> dict[str, str]:
    found: dict[str, str] = {}
    i = 240
    while i < len(reply) and reply[i] != 255:
        if reply[i] == 0:
            i += 1
            continue
        code, length = reply[i], reply[i + 1]
        found[str(code)] = reply[i + 2 : i + 2 + length].hex()
        i += 2 + length
    found["yiaddr"] = socket.inet_ntoa(reply[16:20])
    found["siaddr"] = socket.inet_ntoa(reply[20:24])
    return found


def main() -> None:
    interface = sys.argv[1]
    mac = bytes.fromhex("b827eb123456")
    xid = int.from_bytes(os.urandom(4), "big")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode())
    sock.bind(("0.0.0.0", 68))
    sock.settimeout(3)
    for _ in range(5):
        sock.sendto(discover(mac, xid), ("255.255.255.255", 67))
        try:
            while True:
                reply, _ = sock.recvfrom(2048)
                if len(reply) > 240 and struct.unpack_from("!I", reply, 4)[0] == xid:
                    print(json.dumps(options(reply)))
                    return
        except TimeoutError:
            continue
    sys.exit("no DHCP reply")


if __name__ == "__main__":
    main()
