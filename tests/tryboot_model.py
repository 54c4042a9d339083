"""A small model of the Raspberry Pi bootloader's partition choice with ``autoboot.txt``
and the one-shot ``tryboot`` flag, from the firmware's documentation. No emulator runs
the Pi firmware, so fleet's rpi-tryboot logic is tested against this model instead.

Sources (raspberrypi/documentation, commit 04d84a86):

- documentation/asciidoc/computers/config_txt/autoboot.adoc:
  R1 "autoboot.txt is an optional configuration file that can be used to specify the
     boot_partition number"; "limited to 512 bytes and supports the [all], [none] and
     [tryboot] conditional filters".
  R2 "boot_partition: Specifies the partition number for booting unless the partition
     number was already specified as a parameter to the reboot command";
     "Specifying partition 0 means boot from the default partition which is the first
     bootable FAT partition".
  R3 "The [tryboot] filter: This filter passes if the system was booted with the
     tryboot flag set" (`sudo reboot "0 tryboot"`).
  R4 tryboot_a_b=1 loads the normal config.txt from the chosen partition in tryboot
     mode (the switch is made at the partition level).
  R5 In the trial, /proc/device-tree/chosen/bootloader/tryboot == 1 and
     /proc/device-tree/chosen/bootloader/partition is the booted partition; commit =
     "Replace autoboot.txt swapping the boot_partition configuration"; otherwise a
     "Normal reboot - partition 2 is still the default boot partition because the
     tryboot flag is automatically cleared".
- documentation/asciidoc/computers/raspberry-pi/bootflow-2711.adoc (TRYBOOT):
  R6 "a one-shot flag which, if set, is cleared ... Since the flag is cleared before
     starting the firmware a crash or reset will cause the original config.txt file to
     be loaded on the next reboot."
- config.txt conditional filters: R7 [all] ends any filter; settings under a filter
  that does not pass are ignored; a later setting overrides an earlier one.
- documentation/asciidoc/computers/raspberry-pi/boot-eeprom.adoc / bootflow-2711.adoc:
  R8 the bootloader loads the GPU firmware (start4.elf on a Pi 4) from the boot
  partition; a FAT partition without it is not one the firmware can start from.

The kernel is part of the path too. The flag reaches the firmware only through the
kernel's reboot handling: Raspberry Pi's kernel (drivers/firmware/raspberrypi.c, commit
0f8dd79 "Add support for tryonce reboot flag") sends SET_REBOOT_FLAGS when the reboot
argument is "tryboot"; mainline Linux, and so Debian's linux-image-arm64, has no such
code and drops it. So the model takes ``kernel_passes_tryboot``, which a test takes from
the kernel image itself (fleet.image.kernel.passes_tryboot), and drops the flag unless
it is true.

What the model leaves out: bootloader EEPROM settings (BOOT_ORDER), other filters
([pi4], [gpio...]), and what happens inside the chosen partition. A partition that is
missing or not bootable is reported as such rather than guessing the firmware's retry.
"""

from __future__ import annotations

from dataclasses import dataclass, field

AUTOBOOT_LIMIT = 512  # R1
START_FILE = "start4.elf"  # R8, a Pi 4's


class NoBootablePartition(Exception):
    """The firmware finds nothing to start (on a real board: the activity LED's code)."""


@dataclass
class PiFirmware:
    """The bootloader's view: partition 1's files, the bootable partitions, and the
    one-shot tryboot flag the kernel set on its way down."""

    firmware_files: dict[str, bytes]
    kernel_passes_tryboot: bool
    # The names on each FAT boot partition other than partition 1 (fleet's slots).
    slot_files: dict[int, set[str]] = field(
        default_factory=lambda: {2: {START_FILE}, 3: {START_FILE}}
    )
    tryboot_flag: bool = False
    reboot_partition: int = 0  # from `reboot "N ..."`; 0 = as autoboot.txt says (R2)

    @property
    def bootable(self) -> set[int]:
        """R8: the partitions holding the start file."""
        found = {n for n, names in self.slot_files.items() if START_FILE in names}
        return found | ({1} if START_FILE in self.firmware_files else set())

    def reboot(self, argument: str = "") -> None:
        """The kernel's reboot with an optional "PARTITION [tryboot]" argument; the
        flag is set only by a kernel that passes it on."""
        words = argument.split()
        self.reboot_partition = int(words[0]) if words else 0
        self.tryboot_flag = self.kernel_passes_tryboot and "tryboot" in words[1:]

    def power_cut(self) -> None:
        # R6: the flag is one-shot and a reset loses a reboot request that was not made.
        self.tryboot_flag = False
        self.reboot_partition = 0

    def boot(self) -> tuple[int, bool]:
        """Which partition boots, and whether in tryboot mode. Clears the flag (R6)."""
        tryboot = self.tryboot_flag
        self.tryboot_flag = False
        requested = self.reboot_partition
        self.reboot_partition = 0
        partition = requested or self._autoboot_partition(tryboot)
        if partition == 0:
            if not self.bootable:
                raise NoBootablePartition("no partition holds " + START_FILE)
            partition = min(self.bootable)  # R2: first bootable FAT partition
        return partition, tryboot

    def _autoboot_partition(self, tryboot: bool) -> int:
        data = self.firmware_files.get("autoboot.txt")
        if data is None or len(data) > AUTOBOOT_LIMIT:  # R1
            return 0
        active = True
        chosen = 0
        for raw in data.decode(errors="replace").splitlines():
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            if line.startswith("[") and line.endswith("]"):
                section = line[1:-1].strip()
                active = section == "all" or (section == "tryboot" and tryboot)  # R3, R7
                continue
            name, _, value = line.partition("=")
            if active and name.strip() == "boot_partition" and value.strip().isdigit():
                chosen = int(value.strip())  # R7: the last one wins
        return chosen
