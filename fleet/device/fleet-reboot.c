/*
 * fleet-reboot ARG: restart the board passing ARG to the firmware, e.g. "0 tryboot" on a
 * Raspberry Pi 4/5 (its one-shot trial boot). busybox's reboot cannot pass an argument,
 * and the kernel hands it to the firmware only through LINUX_REBOOT_CMD_RESTART2.
 * The caller stops services and flushes first (the agent runs rc.shutdown).
 */
#include <linux/reboot.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc != 2) {
        fputs("usage: fleet-reboot ARG\n", stderr);
        return 2;
    }
    sync();
    syscall(SYS_reboot, LINUX_REBOOT_MAGIC1, LINUX_REBOOT_MAGIC2, LINUX_REBOOT_CMD_RESTART2,
            argv[1]);
    perror("fleet-reboot");
    return 1;
}
