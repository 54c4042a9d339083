"""Cross-build of the app, rootfs assembly, slot payloads, disk image, bmap and report."""
