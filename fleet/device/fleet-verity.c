/*
 * fleet-verity NAME SECTORS PARAMS: make the read-only device-mapper device NAME with one
 * "verity" target of SECTORS 512-byte sectors and the table parameters PARAMS
 * (Documentation/admin-guide/device-mapper/verity.rst), activate it, and print the
 * block device it became (/dev/dm-N).
 *
 * The initramfs runs it to map the slot's root partition through dm-verity. busybox has
 * no dmsetup and veritysetup needs several shared libraries, so this issues the three
 * device-mapper ioctls itself: DM_DEV_CREATE, DM_TABLE_LOAD, DM_DEV_SUSPEND (without
 * DM_SUSPEND_FLAG it resumes, which makes the loaded table live). The kernel writes the
 * reason a table is refused to its log ("device-mapper: table: ... verity: ...").
 * Any failure removes the half-made device and exits 1: the caller must not boot.
 *
 * fleet-verity --modules FILE...: load the kernel modules the root needs first
 * (modload.h), so the initramfs starts one program for all of them; exit 1 if one failed.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/dm-ioctl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "modload.h"

#define CONTROL "/dev/mapper/control"
#define MAX_PARAMS 1024

/* The ioctl header, one target and its parameters, in one 8-byte aligned buffer. */
static union {
    struct dm_ioctl io;
    uint64_t align;
    unsigned char bytes[sizeof(struct dm_ioctl) + sizeof(struct dm_target_spec) + MAX_PARAMS + 8];
} buf;

static void header(const char *name, uint32_t flags)
{
    memset(&buf, 0, sizeof(buf));
    buf.io.version[0] = DM_VERSION_MAJOR;
    buf.io.data_size = sizeof(buf);
    buf.io.data_start = sizeof(struct dm_ioctl);
    buf.io.flags = flags;
    strncpy(buf.io.name, name, sizeof(buf.io.name) - 1);
}

static int dm(int control, unsigned long request, const char *what)
{
    if (ioctl(control, request, &buf.io) == 0)
        return 0;
    fprintf(stderr, "fleet-verity: %s: %s\n", what, strerror(errno));
    return -1;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "--modules") == 0)
        return load_modules("fleet-verity", argc - 2, argv + 2);
    if (argc != 4) {
        fputs("usage: fleet-verity NAME SECTORS PARAMS\n", stderr);
        return 2;
    }
    const char *name = argv[1], *params = argv[3];
    char *end;
    errno = 0;
    unsigned long long sectors = strtoull(argv[2], &end, 10);
    if (errno || *end || end == argv[2] || sectors == 0 || argv[2][0] == '-') {
        fprintf(stderr, "fleet-verity: bad sector count %s\n", argv[2]);
        return 2;
    }
    if (strlen(name) == 0 || strlen(name) >= DM_NAME_LEN) {
        fputs("fleet-verity: bad device name\n", stderr);
        return 2;
    }
    size_t length = strlen(params);
    if (length == 0 || length >= MAX_PARAMS) {
        fputs("fleet-verity: bad table parameters\n", stderr);
        return 2;
    }

    int control = open(CONTROL, O_RDWR | O_CLOEXEC);
    if (control < 0) {
        fprintf(stderr, "fleet-verity: %s: %s (is dm-mod loaded?)\n", CONTROL, strerror(errno));
        return 1;
    }

    header(name, 0);
    if (dm(control, DM_DEV_CREATE, "create") != 0)
        return 1;
    unsigned int minor_number = minor(buf.io.dev);

    header(name, DM_READONLY_FLAG);
    buf.io.target_count = 1;
    struct dm_target_spec *spec = (struct dm_target_spec *)(buf.bytes + sizeof(struct dm_ioctl));
    spec->sector_start = 0;
    spec->length = sectors;
    strncpy(spec->target_type, "verity", sizeof(spec->target_type) - 1);
    memcpy((char *)(spec + 1), params, length + 1);
    if (dm(control, DM_TABLE_LOAD, "load table") == 0) {
        header(name, 0);
        if (dm(control, DM_DEV_SUSPEND, "resume") == 0) {
            printf("/dev/dm-%u\n", minor_number);
            return fflush(stdout) == 0 ? 0 : 1;
        }
    }
    header(name, 0);
    dm(control, DM_DEV_REMOVE, "remove");
    return 1;
}
