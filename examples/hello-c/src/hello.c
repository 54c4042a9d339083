/*
 * hello-c: a tiny HTTP/1.0 service for fleet's example image.
 *
 *   GET /health   -> 200 "ok"
 *   GET /version  -> 200 with the app version
 *   anything else -> 404 (or 400 for a request that is not HTTP)
 *
 * Environment: PORT (default 8080; 0 picks a free port), BIND (default 0.0.0.0),
 * FLEET_APP_VERSION (set by the board; falls back to the compile-time APP_VERSION).
 * One request at a time: the service is tiny on purpose, and a client that stalls is
 * cut off by a receive timeout so it cannot block the others for long.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#ifndef APP_VERSION
#define APP_VERSION "unknown"
#endif

#define REQUEST_MAX 8192

static const char *app_version(void)
{
    const char *v = getenv("FLEET_APP_VERSION");
    return (v && *v) ? v : APP_VERSION;
}

static int parse_port(const char *text)
{
    char *end;
    long port;

    if (!text || !*text)
        return 8080;
    errno = 0;
    port = strtol(text, &end, 10);
    if (errno || *end || port < 0 || port > 65535)
        return -1;
    return (int)port;
}

static void send_all(int fd, const char *data, size_t len)
{
    while (len > 0) {
        ssize_t n = send(fd, data, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return;
        data += n;
        len -= (size_t)n;
    }
}

static void respond(int fd, int status, const char *reason, const char *body)
{
    char head[256];
    int n = snprintf(head, sizeof head,
                     "HTTP/1.0 %d %s\r\nContent-Type: text/plain\r\n"
                     "Content-Length: %zu\r\nConnection: close\r\n\r\n",
                     status, reason, strlen(body));
    if (n > 0 && (size_t)n < sizeof head)
        send_all(fd, head, (size_t)n);
    send_all(fd, body, strlen(body));
}

/* Reads until the end of the headers; returns the bytes read or -1. */
static ssize_t read_request(int fd, char *buf, size_t size)
{
    size_t used = 0;

    while (used < size - 1) {
        ssize_t n = recv(fd, buf + used, size - 1 - used, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        used += (size_t)n;
        buf[used] = '\0';
        if (strstr(buf, "\r\n\r\n") || strstr(buf, "\n\n"))
            break;
    }
    buf[used] = '\0';
    return used ? (ssize_t)used : -1;
}

/* Keeps the log line printable whatever the client sent. */
static void sanitize(char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || (unsigned char)*s > 0x7e)
            *s = '?';
}

static void handle(int fd, const struct sockaddr_in *peer)
{
    char buf[REQUEST_MAX];
    char method[16] = "-", path[256] = "-";
    char version[64];
    int status;
    ssize_t got = read_request(fd, buf, sizeof buf);

    if (got < 0) {
        status = 400;
        respond(fd, status, "Bad Request", "bad request\n");
    } else if (sscanf(buf, "%15s %255s HTTP/%63s", method, path, version) != 3) {
        status = 400;
        respond(fd, status, "Bad Request", "bad request\n");
    } else {
        char *query = strchr(path, '?');
        if (query)
            *query = '\0';
        if (strcmp(method, "GET") == 0 && strcmp(path, "/health") == 0) {
            status = 200;
            respond(fd, status, "OK", "ok\n");
        } else if (strcmp(method, "GET") == 0 && strcmp(path, "/version") == 0) {
            char body[256];
            snprintf(body, sizeof body, "%s\n", app_version());
            status = 200;
            respond(fd, status, "OK", body);
        } else {
            status = 404;
            respond(fd, status, "Not Found", "not found\n");
        }
    }
    sanitize(method);
    sanitize(path);
    fprintf(stderr, "%s %s %s %d\n", inet_ntoa(peer->sin_addr), method, path, status);
}

int main(void)
{
    int port = parse_port(getenv("PORT"));
    const char *bind_addr = getenv("BIND");
    struct sockaddr_in addr;
    socklen_t addr_len = sizeof addr;
    int one = 1;
    int server;

    setvbuf(stderr, NULL, _IOLBF, 0);
    signal(SIGPIPE, SIG_IGN);
    if (port < 0) {
        fprintf(stderr, "hello-c: PORT must be a number from 0 to 65535\n");
        return 2;
    }
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((unsigned short)port);
    if (inet_pton(AF_INET, (bind_addr && *bind_addr) ? bind_addr : "0.0.0.0",
                  &addr.sin_addr) != 1) {
        fprintf(stderr, "hello-c: BIND must be an IPv4 address\n");
        return 2;
    }
    server = socket(AF_INET, SOCK_STREAM, 0);
    if (server < 0) {
        perror("hello-c: socket");
        return 1;
    }
    setsockopt(server, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(server, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(server, 64) < 0) {
        perror("hello-c: bind");
        return 1;
    }
    getsockname(server, (struct sockaddr *)&addr, &addr_len);
    fprintf(stderr, "hello-c %s listening on %s:%d\n", app_version(),
            inet_ntoa(addr.sin_addr), ntohs(addr.sin_port));

    for (;;) {
        struct sockaddr_in peer;
        socklen_t peer_len = sizeof peer;
        struct timeval timeout = {5, 0};
        int fd = accept(server, (struct sockaddr *)&peer, &peer_len);

        if (fd < 0) {
            if (errno != EINTR) {
                perror("hello-c: accept");
                /* Out of descriptors or memory: back off instead of spinning. */
                usleep(100000);
            }
            continue;
        }
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout);
        handle(fd, &peer);
        close(fd);
    }
}
