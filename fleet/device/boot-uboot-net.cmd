# fleet netboot script for uboot-ab boards (U-Boot hush), served by `fleet serve` as
# boot.scr.uimg: the name U-Boot's own DHCP boot (bootcmd_dhcp) asks for, so a board
# whose disks hold nothing bootable falls through to it. U-Boot has the board's address
# and the server's (ipaddr, netmask, serverip: from `dhcp` or set in its environment).
#
# It loads the slot's kernel, the netboot initramfs and the device tree by path, and
# names the server and the board's address on the kernel command line: initrd-net.zst
# fetches the rootfs and the signed manifest itself and checks them (docs/netboot.md).
# Nothing here touches a disk; what differs per board is in the @BOARD@ lines.
@BOARD@
if test -z "${netmask}"; then setenv netmask 255.255.255.0; fi
echo "fleet: netboot from ${serverip} as ${ipaddr}"
setenv bootargs "console=${fleet_console} panic=5 loglevel=4 cryptomgr.notests fleet.netboot=${serverip} fleet.ip=${ipaddr} fleet.netmask=${netmask}"
if test -n "${gatewayip}"; then setenv bootargs "${bootargs} fleet.gateway=${gatewayip}"; fi
if test -n "${fleet_bootargs}"; then setenv bootargs "${bootargs} ${fleet_bootargs}"; fi
tftpboot ${kernel_addr_r} Image.gz || reset
setenv kernel_comp_size ${filesize}
tftpboot ${ramdisk_addr_r} initrd-net.zst || reset
setenv fleet_initrd_size ${filesize}
if test -n "${fleet_dtb}"; then
    tftpboot ${fdt_addr_r} ${fleet_dtb} || reset
    booti ${kernel_addr_r} ${ramdisk_addr_r}:${fleet_initrd_size} ${fdt_addr_r}
else
    # QEMU virt hands U-Boot the machine's device tree; pass the same one on.
    booti ${kernel_addr_r} ${ramdisk_addr_r}:${fleet_initrd_size} ${fdtcontroladdr}
fi
echo "fleet: netboot failed: the kernel did not start"
reset
