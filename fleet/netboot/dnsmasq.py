"""A proxy-DHCP configuration for dnsmasq that points Raspberry Pis at ``fleet serve``.

DHCP stays with the network's own server; dnsmasq only adds the PXE answer the Pi
firmware looks for (Raspberry Pi documentation, "Network booting"): option 43 with the
PXE service "Raspberry Pi Boot", spelled with three trailing spaces because older Pi 3
boot ROMs compare the whole 20-byte field, with ``--bind`` as its boot server (``port=0``
turns dnsmasq's DNS off; its TFTP stays off: TFTP is fleet's).

Measured with dnsmasq 2.90 (tests/integration/test_netboot_dnsmasq.py): the proxy offer
carries option 43 and dnsmasq's own address as server identifier (54), but no option 66
and no siaddr, whatever ``dhcp-option-force`` says: so the boards fetch from the
proxy's own address, and ``fleet serve`` runs on the host that runs dnsmasq."""

from __future__ import annotations

import ipaddress

from fleet.errors import UsageError

SERVICE = "Raspberry Pi Boot   "


def config(server: str, subnet: str | None = None, interface: str | None = None) -> str:
    try:
        address = ipaddress.IPv4Address(server)
    except ValueError:
        raise UsageError(f"--bind {server!r} is not an IPv4 address") from None
    if address.is_unspecified:
        raise UsageError("--dnsmasq-conf needs --bind ADDRESS: the address boards fetch from")
    try:
        network = ipaddress.IPv4Network(subnet or f"{server}/24", strict=False)
    except ValueError:
        raise UsageError(f"--subnet {subnet!r} is not an IPv4 network") from None
    if address not in network:
        raise UsageError(f"{server} is not in {network}")
    lines = [
        f"# dnsmasq as proxy-DHCP for Raspberry Pi network boot; TFTP is fleet serve on {server}",
        "port=0",
        *([f"interface={interface}", "bind-interfaces"] if interface else []),
        f"dhcp-range={network.network_address},proxy",
        "log-dhcp",
        f'pxe-service=0,"{SERVICE}",bootcode.bin,{server}',
    ]
    return "\n".join(lines) + "\n"
