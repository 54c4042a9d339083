/*
 * fleet-tool: the two things the board's POSIX sh cannot do by itself.
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
 *
 * busybox has neither flock nor a setuid runner (its setpriv lacks --reuid), and both
 * are a few lines of C. Built static so it also runs where no libc is (an initramfs).
 */
#include <errno.h>
#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

static int usage(void)
{
    fputs("usage: fleet-tool lock FD SECONDS | as-user UID GID PROG [ARGS...]\n", stderr);
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

int main(int argc, char **argv)
{
    if (argc == 4 && strcmp(argv[1], "lock") == 0)
        return lock(argv[2], argv[3]);
    if (argc >= 5 && strcmp(argv[1], "as-user") == 0)
        return as_user(argc - 2, argv + 2);
    return usage();
}
