#!/bin/sh
# Installs the Debian packages fleet needs, only those missing. Idempotent and quiet
# when everything is there. Needs root (or sudo).
set -eu

PACKAGES="
qemu-system-arm qemu-utils u-boot-qemu u-boot-rpi:arm64 dropbear-bin
gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf libc6-dev-arm64-cross libc6-dev-armhf-cross
golang-go
squashfs-tools dosfstools mtools fdisk u-boot-tools e2fsprogs
mmdebstrap debian-archive-keyring
bmap-tools rauc signify-openbsd busybox-static cryptsetup-bin
zstd xz-utils cpio file libzstd-dev libzstd-dev:arm64
bsdiff xdelta3 rsync
iproute2 openssh-client udev kmod curl dnsmasq-base
shellcheck strace nginx
python3-venv
"

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi

missing=""
for p in $PACKAGES; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done

if [ -n "$missing" ]; then
    echo "installing Debian packages:$missing"
    # Some board firmware (u-boot-rpi) exists only as an arm64 package: multiarch.
    if ! dpkg --print-foreign-architectures | grep -qx arm64; then
        $SUDO dpkg --add-architecture arm64
    fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
fi
