/*
 * fleet-delta: rebuild a payload from a zstd --patch-from delta against the payload the
 * board already runs, streaming, with no temporary copy of either on the board.
 *
 *   fleet-delta apply REF REF_SIZE OUT_SIZE WINDOW_LOG_MAX < DELTA > PAYLOAD
 *
 * REF is the running slot's partition; its first REF_SIZE bytes (the payload it was
 * written with) are mapped read-only and given to the decoder as its reference prefix
 * (ZSTD_DCtx_refPrefix), so they are page cache the kernel can drop and read again, not
 * memory of this process. The decoder's own window buffer is the one allocation that
 * grows with the payload: WINDOW_LOG_MAX caps it (the agent derives it from the board's
 * free memory), and a delta that needs more is refused before any output.
 *
 * Written to standard output: exactly OUT_SIZE bytes or an error. Refused (exit 1, one
 * line on stderr): a frame whose window exceeds the cap, a skippable or second frame,
 * data after the frame, a frame without its content checksum (it is what tells a wrong
 * reference from a right one before the read-back does), a declared content size other
 * than OUT_SIZE, output beyond OUT_SIZE, or a stream that ends inside the frame. The
 * agent checks the written partition against the signed manifest in every case: this
 * program's checks only make a bad delta fail early and say why.
 *
 * Exit 0 done, 1 refused or failed, 2 bad usage.
 */
#define ZSTD_STATIC_LINKING_ONLY /* ZSTD_getFrameHeader, ZSTD_d_windowLogMax's bounds */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/fs.h> /* BLKGETSIZE64 */
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zstd.h>

#define IN_CHUNK (128 * 1024)

static int usage(void)
{
    fputs("usage: fleet-delta apply REF REF_SIZE OUT_SIZE WINDOW_LOG_MAX < DELTA > PAYLOAD\n",
          stderr);
    return 2;
}

static int fail(const char *what, const char *why)
{
    fprintf(stderr, "fleet-delta: %s%s%s\n", what, why ? ": " : "", why ? why : "");
    return 1;
}

static int number(const char *text, unsigned long long max, unsigned long long *out)
{
    char *end;
    if (text[0] < '0' || text[0] > '9')
        return -1;
    errno = 0;
    unsigned long long value = strtoull(text, &end, 10);
    if (errno || *end || value > max)
        return -1;
    *out = value;
    return 0;
}

static int write_all(const void *data, size_t size)
{
    const unsigned char *p = data;
    while (size) {
        ssize_t n = write(STDOUT_FILENO, p, size);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        p += n;
        size -= (size_t)n;
    }
    return 0;
}

/* Fills BUF with up to CAP bytes of standard input; returns the count, 0 at its end. */
static ssize_t read_some(unsigned char *buf, size_t cap)
{
    for (;;) {
        ssize_t n = read(STDIN_FILENO, buf, cap);
        if (n < 0 && errno == EINTR)
            continue;
        return n;
    }
}

/* Everything the header says is checked before the decoder runs. */
static int check_header(const unsigned char *head, size_t have, unsigned long long out_size,
                        unsigned window_log_max)
{
    ZSTD_frameHeader h;
    size_t r = ZSTD_getFrameHeader(&h, head, have);
    if (ZSTD_isError(r))
        return fail("not a zstd frame", ZSTD_getErrorName(r));
    if (r != 0)
        return fail("the delta is shorter than a frame header", NULL);
    if (h.frameType != ZSTD_frame)
        return fail("a skippable frame is not a delta", NULL);
    if (!h.checksumFlag)
        return fail("the frame carries no content checksum", NULL);
    if (h.frameContentSize != ZSTD_CONTENTSIZE_UNKNOWN && h.frameContentSize != out_size) {
        fprintf(stderr, "fleet-delta: the frame makes %llu bytes, the payload is %llu\n",
                (unsigned long long)h.frameContentSize, out_size);
        return 1;
    }
    if (h.windowSize > (1ULL << window_log_max)) {
        fprintf(stderr,
                "fleet-delta: the delta needs a %llu KiB window; this board allows %llu KiB\n",
                (unsigned long long)((h.windowSize + 1023) >> 10), (1ULL << window_log_max) >> 10);
        return 1;
    }
    return 0;
}

static int apply(const char *ref_path, unsigned long long ref_size, unsigned long long out_size,
                 unsigned window_log_max)
{
    int fd = open(ref_path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return fail(ref_path, strerror(errno));
    /* A map past the end of the device would be SIGBUS at the first read there. */
    struct stat st;
    unsigned long long have_bytes = 0;
    if (fstat(fd, &st) != 0)
        return fail(ref_path, strerror(errno));
    if (S_ISREG(st.st_mode))
        have_bytes = (unsigned long long)st.st_size;
    else if (!S_ISBLK(st.st_mode) || ioctl(fd, BLKGETSIZE64, &have_bytes) != 0)
        return fail(ref_path, "neither a block device nor a file");
    if (have_bytes < ref_size)
        return fail(ref_path, "shorter than the reference size");
    void *ref = mmap(NULL, ref_size, PROT_READ, MAP_SHARED, fd, 0);
    if (ref == MAP_FAILED)
        return fail("mapping the reference", strerror(errno));
    close(fd);
    /* Read in order, mostly once, as the delta's matches walk the old payload. */
    madvise(ref, ref_size, MADV_SEQUENTIAL);

    ZSTD_DCtx *dctx = ZSTD_createDCtx();
    size_t out_cap = ZSTD_DStreamOutSize();
    unsigned char *in = malloc(IN_CHUNK), *out = malloc(out_cap);
    if (!dctx || !in || !out)
        return fail("out of memory", NULL);
    size_t r = ZSTD_DCtx_setParameter(dctx, ZSTD_d_windowLogMax, (int)window_log_max);
    if (!ZSTD_isError(r))
        r = ZSTD_DCtx_refPrefix(dctx, ref, ref_size);
    if (ZSTD_isError(r))
        return fail("setting up the decoder", ZSTD_getErrorName(r));

    ssize_t have = 0;
    /* The header comes first whole (at most ZSTD_FRAMEHEADERSIZE_MAX bytes). */
    while (have < ZSTD_FRAMEHEADERSIZE_MAX) {
        ssize_t n = read_some(in + have, (size_t)(ZSTD_FRAMEHEADERSIZE_MAX - have));
        if (n < 0)
            return fail("reading the delta", strerror(errno));
        if (n == 0)
            break;
        have += n;
    }
    if (check_header(in, (size_t)have, out_size, window_log_max))
        return 1;

    unsigned long long written = 0;
    size_t pending = (size_t)have, hint;
    int ended = 0;
    for (;;) {
        if (pending == 0 && !ended) {
            ssize_t n = read_some(in, IN_CHUNK);
            if (n < 0)
                return fail("reading the delta", strerror(errno));
            if (n == 0)
                ended = 1;
            pending = (size_t)n;
        }
        if (pending == 0 && ended)
            break;
        ZSTD_inBuffer ib = {in, pending, 0};
        for (;;) {
            ZSTD_outBuffer ob = {out, out_cap, 0};
            hint = ZSTD_decompressStream(dctx, &ob, &ib);
            if (ZSTD_isError(hint))
                return fail("the delta does not apply to this slot", ZSTD_getErrorName(hint));
            if (ob.pos > out_size - written)
                return fail("the delta makes more than the payload's size", NULL);
            if (ob.pos && write_all(out, ob.pos))
                return fail("writing the payload", strerror(errno));
            written += ob.pos;
            if (hint == 0) {
                /* The frame and its checksum are done: nothing may follow. */
                if (ib.pos < ib.size)
                    return fail("data after the delta's frame", NULL);
                unsigned char extra;
                ssize_t n = read_some(&extra, 1);
                if (n != 0)
                    return fail(n < 0 ? "reading the delta" : "data after the delta's frame",
                                n < 0 ? strerror(errno) : NULL);
                if (written != out_size)
                    return fail("the delta makes fewer bytes than the payload's size", NULL);
                return 0;
            }
            /* A full output buffer may hold back more; otherwise it wants input. */
            if (ib.pos == ib.size && ob.pos < ob.size)
                break;
        }
        pending = 0;
    }
    return fail("the delta ends inside its frame", NULL);
}

int main(int argc, char **argv)
{
    unsigned long long ref_size, out_size, wlog;
    if (argc != 6 || strcmp(argv[1], "apply") != 0)
        return usage();
    if (number(argv[3], SIZE_MAX, &ref_size) || ref_size == 0
        || number(argv[4], 1ULL << 40, &out_size) || number(argv[5], ZSTD_WINDOWLOG_MAX, &wlog)
        || wlog < ZSTD_WINDOWLOG_MIN)
        return usage();
    return apply(argv[2], ref_size, out_size, (unsigned)wlog);
}
