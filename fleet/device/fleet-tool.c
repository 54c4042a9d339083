/*
 * fleet-tool: what the board's POSIX sh cannot do by itself, or only slowly.
 *
 *   fleet-tool lock FD SECONDS     take an exclusive flock(2) on the open file FD (the
 *                                  caller's shell opened it: `exec 9>FILE`), waiting up to
 *                                  SECONDS (0: not at all). The lock belongs to the open
 *                                  file, which the calling shell keeps: it holds until that
 *                                  shell and every child that inherited FD have exited, so a
 *                                  killed agent can never leave a stale lock behind.
 *                                  Exit 0 taken, 1 held by another process, 2 bad usage.
 *   fleet-tool as-user UID GID PROG [ARGS...]
 *                                  run PROG with no supplementary groups, GID and UID (in
 *                                  that order, so root cannot be regained), and the
 *                                  no-new-privileges bit set (no set-uid program gives it
 *                                  back): how the app and its health check run.
 *   fleet-tool crc32               print the CRC-32 (zlib's) of standard input as 8 hex
 *                                  digits in little-endian byte order: the order U-Boot
 *                                  stores it in front of an exported environment.
 *   fleet-tool env-read FILE SIZE  one boot state copy (U-Boot `env export -c`: CRC-32,
 *                                  then NUL-terminated name=value strings, SIZE bytes in
 *                                  all): print its strings a line each, up to the first
 *                                  empty one. Exit 1 if the file is missing, shorter than
 *                                  SIZE or its CRC does not match (a torn write).
 *   fleet-tool take SIZE           copy exactly SIZE bytes of standard input to standard
 *                                  output, and only if the input then ends: the last block
 *                                  is held back until end of input is seen, so a stream
 *                                  longer than SIZE (a store's endless data) never hands
 *                                  its reader all SIZE bytes, and one shorter does not
 *                                  either. Exit 1 (after at most SIZE + 1 bytes read) when
 *                                  the input is longer or shorter.
 *
 * The agent computed CRCs with a gzip pipeline and read each copy with a dozen more
 * processes; on the virtual board every process start costs about 35 ms, which made
 * `agent status` take 3 s.
 *
 * busybox has neither flock nor a setuid runner (its setpriv lacks --reuid), and both
 * are a few lines of C. Built static so it also runs where no libc is (an initramfs).
 */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

static int usage(void)
{
    fputs("usage: fleet-tool lock FD SECONDS | as-user UID GID PROG [ARGS...] | crc32"
          " | env-read FILE SIZE | take SIZE\n",
          stderr);
    return 2;
}

static int number(const char *text, long max, long *out)
{
    char *end;
    long value;

    if (*text == '\0')
        return -1;
    errno = 0;
    value = strtol(text, &end, 10);
    if (errno != 0 || *end != '\0' || value < 0 || value > max)
        return -1;
    *out = value;
    return 0;
}

static int lock(const char *fd_text, const char *seconds_text)
{
    long fd, seconds;
    struct timespec pause = {0, 100 * 1000 * 1000};
    long waited_ms = 0;

    if (number(fd_text, 1023, &fd) != 0 || number(seconds_text, 3600, &seconds) != 0)
        return usage();
    for (;;) {
        if (flock((int)fd, LOCK_EX | LOCK_NB) == 0)
            return 0;
        if (errno != EWOULDBLOCK && errno != EINTR) {
            perror("fleet-tool lock");
            return 2;
        }
        if (waited_ms >= seconds * 1000)
            return 1;
        nanosleep(&pause, NULL);
        waited_ms += 100;
    }
}

static int as_user(int argc, char **argv)
{
    long uid, gid;

    if (argc < 3 || number(argv[0], 65534, &uid) != 0 || number(argv[1], 65534, &gid) != 0)
        return usage();
    if (uid == 0 || gid == 0) {
        fputs("fleet-tool as-user: refusing to run as root\n", stderr);
        return 2;
    }
    if (setgroups(0, NULL) != 0 || setgid((gid_t)gid) != 0 || setuid((uid_t)uid) != 0) {
        perror("fleet-tool as-user");
        return 1;
    }
    if (setuid(0) == 0) {
        fputs("fleet-tool as-user: root could be regained\n", stderr);
        return 1;
    }
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
        perror("fleet-tool as-user: no_new_privs");
        return 1;
    }
    execvp(argv[2], &argv[2]);
    fprintf(stderr, "fleet-tool as-user: %s: %s\n", argv[2], strerror(errno));
    return 127;
}

static uint32_t crc32_update(uint32_t crc, const unsigned char *data, size_t length)
{
    crc = ~crc;
    while (length--) {
        crc ^= *data++;
        for (int bit = 0; bit < 8; bit++)
            crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
    }
    return ~crc;
}

static void print_crc(uint32_t crc)
{
    printf("%02x%02x%02x%02x\n", crc & 0xff, (crc >> 8) & 0xff, (crc >> 16) & 0xff, crc >> 24);
}

static int crc32_stdin(void)
{
    unsigned char buffer[65536];
    uint32_t crc = 0;
    ssize_t got;

    while ((got = read(0, buffer, sizeof buffer)) != 0) {
        if (got < 0) {
            if (errno == EINTR)
                continue;
            perror("fleet-tool crc32");
            return 1;
        }
        crc = crc32_update(crc, buffer, (size_t)got);
    }
    print_crc(crc);
    return 0;
}

#define MAX_ENV 65536

static int env_read(const char *path, const char *size_text)
{
    static unsigned char buffer[MAX_ENV + 1];
    long size;
    size_t have = 0;

    if (number(size_text, MAX_ENV, &size) != 0 || size < 5)
        return usage();
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 1;
    while (have < (size_t)size) {
        ssize_t got = read(fd, buffer + have, (size_t)size - have);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            break;
        have += (size_t)got;
    }
    close(fd);
    if (have < (size_t)size)
        return 1;
    uint32_t stored = (uint32_t)buffer[0] | (uint32_t)buffer[1] << 8 |
                      (uint32_t)buffer[2] << 16 | (uint32_t)buffer[3] << 24;
    if (crc32_update(0, buffer + 4, (size_t)size - 4) != stored)
        return 1;
    buffer[size] = '\0';
    for (size_t at = 4; at < (size_t)size && buffer[at] != '\0';) {
        size_t length = strlen((const char *)buffer + at);
        printf("%s\n", (const char *)buffer + at);
        at += length + 1;
    }
    return 0;
}

static int write_all(const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = write(1, buf, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Fill buf with up to len bytes; returns how many (short only at end of input). */
static ssize_t read_full(char *buf, size_t len)
{
    size_t got = 0;
    while (got < len) {
        ssize_t n = read(0, buf + got, len - got);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (n == 0)
            break;
        got += (size_t)n;
    }
    return (ssize_t)got;
}

static int cmd_take(const char *size_text)
{
    static char buf[65536];
    long long left;
    char *end;
    char extra;

    errno = 0;
    left = strtoll(size_text, &end, 10);
    if (*size_text == '\0' || *end != '\0' || errno != 0 || left < 0)
        return usage();
    /* Everything but the last block goes straight through. */
    while (left > (long long)sizeof(buf)) {
        ssize_t n = read_full(buf, sizeof(buf));
        if (n < (ssize_t)sizeof(buf)) {
            fputs("take: input ended early\n", stderr);
            return 1;
        }
        if (write_all(buf, (size_t)n) != 0)
            return 1;
        left -= n;
    }
    ssize_t n = read_full(buf, (size_t)left);
    if (n != (ssize_t)left) {
        fputs("take: input ended early\n", stderr);
        return 1;
    }
    if (read_full(&extra, 1) != 0) {
        fputs("take: input is longer than its signed size\n", stderr);
        return 1;
    }
    return write_all(buf, (size_t)n) == 0 ? 0 : 1;
}

int main(int argc, char **argv)
{
    if (argc == 4 && strcmp(argv[1], "lock") == 0)
        return lock(argv[2], argv[3]);
    if (argc >= 5 && strcmp(argv[1], "as-user") == 0)
        return as_user(argc - 2, argv + 2);
    if (argc == 2 && strcmp(argv[1], "crc32") == 0)
        return crc32_stdin();
    if (argc == 3 && strcmp(argv[1], "take") == 0)
        return cmd_take(argv[2]);
    if (argc == 4 && strcmp(argv[1], "env-read") == 0)
        return env_read(argv[2], argv[3]);
    return usage();
}
