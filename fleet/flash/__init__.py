"""USB desk flashing: device discovery, safety checks, bmap-aware writing, read-back
verification, and the Raspberry Pi USB boot-ROM handshake."""
