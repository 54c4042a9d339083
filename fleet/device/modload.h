/*
 * load_modules: load the kernel modules PATHS[0..COUNT) in the order given (each one's
 * dependencies before it) with finit_module(2), in the calling process.
 *
 * Both boot stages load their modules through this (the initramfs with fleet-verity
 * --modules, the system start with fleet-modules) instead of one busybox insmod per
 * module: starting a process costs about 35 ms on the virtual board's emulated CPU, which
 * for the ten or so modules of each stage was most of the time spent loading them.
 *
 * A module already loaded (EEXIST) counts as loaded. One that cannot be opened or loaded
 * is named on standard error, prefixed with PROG, and the others are still tried.
 * Returns 0 if all loaded, 1 otherwise; the caller decides what a failure means.
 */
#ifndef FLEET_MODLOAD_H
#define FLEET_MODLOAD_H

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static int load_modules(const char *prog, int count, char **paths)
{
    int failed = 0;

    for (int i = 0; i < count; i++) {
        int fd = open(paths[i], O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            fprintf(stderr, "%s: cannot open %s: %s\n", prog, paths[i], strerror(errno));
            failed = 1;
            continue;
        }
        if (syscall(SYS_finit_module, fd, "", 0) != 0 && errno != EEXIST) {
            fprintf(stderr, "%s: cannot load %s: %s\n", prog, paths[i], strerror(errno));
            failed = 1;
        }
        close(fd);
    }
    return failed;
}

#endif
