# fleet boot script for uboot-ab boards (U-Boot hush). Every board runs these same bytes:
# what differs per board (load addresses, console, device tree) is in fleet/uboot-board.txt
# on partition 1, which `fleet build` writes from the board profile. The disk is the one
# this script was loaded from (U-Boot's devtype and devnum, set by its distro boot scan or
# by the bootcmd of fleet's uboot.env).
#
# Slot A = boot partition 2 + rootfs partition 5; slot B = 3 + 6. Partition 1 (FAT)
# holds this script, the boot state and the board's provisioning settings.
#
# Boot state (docs/ab-update.md): two copies, fleet/bootstate.1 and fleet/bootstate.2,
# each in `env export -c` form (CRC32 + "name=value\0" pairs). A copy counts only if
# its CRC matches; the valid copy with the higher fleet_seq wins; a write always goes to
# the other copy with fleet_seq + 1, so a write cut by power loss leaves the winner
# intact. No valid copy means: slot A is the default, nothing on trial.
#
# Attempts are counted only while a trial is pending: a boot with no trial writes
# nothing. A trial with attempts left is booted after its counter is decremented on
# disk; one with none left is dropped and the default slot boots.
setenv fleet_dev "${devtype} ${devnum}"
if load ${fleet_dev}:1 ${kernel_addr_r} fleet/uboot-board.txt; then
    env import -t ${kernel_addr_r} ${filesize}
else
    echo "fleet: no fleet/uboot-board.txt on partition 1; using the load addresses U-Boot has"
fi
setenv fleet_size 0x200
setenv fleet_buf1 ${kernel_addr_r}
setenv fleet_buf2 ${ramdisk_addr_r}
setenv fleet_vars "fleet_seq fleet_default fleet_trial fleet_tries fleet_floor fleet_slot_A fleet_slot_B fleet_last"

setenv fleet_ok1 0
setenv fleet_ok2 0
setenv fleet_seq
if load ${fleet_dev}:1 ${fleet_buf1} fleet/bootstate.1 && env import -c ${fleet_buf1} ${filesize} fleet_seq; then
    setenv fleet_ok1 1
    setenv fleet_seq1 0
    if test -n "${fleet_seq}"; then setenv fleet_seq1 ${fleet_seq}; fi
fi
setenv fleet_seq
if load ${fleet_dev}:1 ${fleet_buf2} fleet/bootstate.2 && env import -c ${fleet_buf2} ${filesize} fleet_seq; then
    setenv fleet_ok2 1
    setenv fleet_seq2 0
    if test -n "${fleet_seq}"; then setenv fleet_seq2 ${fleet_seq}; fi
fi

# Which copy is current (read) and which one the next write goes to.
setenv fleet_read 0
setenv fleet_write 1
if test ${fleet_ok1} = 1; then
    setenv fleet_read 1
    setenv fleet_write 2
fi
if test ${fleet_ok2} = 1; then
    if test ${fleet_ok1} = 0; then
        setenv fleet_read 2
        setenv fleet_write 1
    elif itest ${fleet_seq2} -gt ${fleet_seq1}; then
        setenv fleet_read 2
        setenv fleet_write 1
    fi
fi

for v in ${fleet_vars}; do setenv ${v}; done
setenv fleet_seq 0
setenv fleet_default A
setenv fleet_tries 0
if test ${fleet_read} = 1; then
    env import -c ${fleet_buf1} ${fleet_size} ${fleet_vars}
elif test ${fleet_read} = 2; then
    env import -c ${fleet_buf2} ${fleet_size} ${fleet_vars}
fi
if test "${fleet_default}" != "B"; then setenv fleet_default A; fi

setenv fleet_slot ${fleet_default}
setenv fleet_trial_arg ""
if test -n "${fleet_trial}" && test "${fleet_trial}" != "${fleet_default}"; then
    if itest ${fleet_tries} -gt 0; then
        setexpr fleet_tries ${fleet_tries} - 1
        setenv fleet_next ${fleet_trial}
    else
        echo "fleet: slot ${fleet_trial} used its boot attempts without committing; back to slot ${fleet_default}"
        setenv fleet_last "fallback ${fleet_trial}"
        setenv fleet_trial
        setenv fleet_next ${fleet_default}
    fi
    setexpr fleet_seq ${fleet_seq} + 1
    env export -c -s ${fleet_size} ${fleet_buf1} ${fleet_vars}
    if fatwrite ${fleet_dev}:1 ${fleet_buf1} fleet/bootstate.${fleet_write} ${fleet_size}; then
        setenv fleet_slot ${fleet_next}
        if test "${fleet_slot}" != "${fleet_default}"; then
            setenv fleet_trial_arg " fleet.trial=1"
            echo "fleet: trial boot of slot ${fleet_slot} (attempts left after this one: ${fleet_tries})"
        fi
    else
        # An attempt that cannot be counted is not made: the trial could loop forever.
        echo "fleet: cannot write the boot state; booting the default slot ${fleet_default}"
    fi
fi

if test "${fleet_slot}" = "B"; then
    setenv fleet_bootpart 3
    setenv fleet_rootpart 6
else
    setenv fleet_bootpart 2
    setenv fleet_rootpart 5
fi

echo "fleet: booting slot ${fleet_slot}"
# The root is named by PARTUUID (the image's fixed disk identifier and the partition
# number), not by a kernel device name: mmcblk0 or mmcblk1, an SD card, eMMC or USB disk.
setenv bootargs "console=${fleet_console} panic=5 loglevel=4 cryptomgr.notests fleet.slot=${fleet_slot} fleet.root=PARTUUID=@DISKID@-0${fleet_rootpart}${fleet_trial_arg}"
if test -n "${fleet_bootargs}"; then setenv bootargs "${bootargs} ${fleet_bootargs}"; fi
load ${fleet_dev}:${fleet_bootpart} ${kernel_addr_r} Image.gz
setenv kernel_comp_size ${filesize}
load ${fleet_dev}:${fleet_bootpart} ${ramdisk_addr_r} initrd.zst
setenv fleet_initrd_size ${filesize}
if test -n "${fleet_dtb}"; then
    load ${fleet_dev}:${fleet_bootpart} ${fdt_addr_r} ${fleet_dtb}
    booti ${kernel_addr_r} ${ramdisk_addr_r}:${fleet_initrd_size} ${fdt_addr_r}
else
    # QEMU virt hands U-Boot the machine's device tree; pass the same one on.
    booti ${kernel_addr_r} ${ramdisk_addr_r}:${fleet_initrd_size} ${fdtcontroladdr}
fi
echo "fleet: boot failed: slot ${fleet_slot} did not start"
reset
