/* SPDX-License-Identifier: MIT */
/*
 * http_gate.c: the front-end's listening socket (http_gate.h). One thread accepts, and
 * watches each new connection with edge-triggered epoll, peeking (MSG_PEEK: nothing is
 * consumed) at its first bytes each time more arrive, until tpm_http_head_check() says the
 * request head is complete and well-formed (then the socket goes to libmicrohttpd, which
 * reads the same bytes again) or malformed (then the gate answers in OpenAI's JSON error
 * shape, reads what the client sent so that closing does not reset the connection before
 * the answer is read, and closes). The check only validates; libmicrohttpd parses.
 */
#include "serve/http_gate.h"

#include <errno.h>
#include <fcntl.h>
#include <microhttpd.h>
#include <netdb.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "base/log.h"
#include "base/timer.h"
#include "serve/api.h"

#define GATE_MAX_PENDING 256 /* connections waiting for their head; more are answered 503 */
#define GATE_LINGER_S    2.0 /* after an error answer, read and drop input this long */
#define GATE_EV_LISTEN   UINT32_MAX
#define GATE_EV_WAKE     (UINT32_MAX - 1)

/* ---- the head check (pure) ------------------------------------------------------------------ */

static int head_tchar(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static int head_bad(int status, int *status_p, char *msg, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

static int head_bad(int status, int *status_p, char *msg, size_t cap, const char *fmt, ...)
{
    va_list ap;

    *status_p = status;
    if (cap > 0) {
        va_start(ap, fmt);
        vsnprintf(msg, cap, fmt, ap);
        va_end(ap);
    }
    return -1;
}

/* what a byte is, for messages: printable as itself, else its hex value */
static const char *head_byte(unsigned char c, char buf[8])
{
    if (c > 0x20 && c < 0x7f) {
        snprintf(buf, 8, "'%c'", c);
    } else {
        snprintf(buf, 8, "0x%02x", c);
    }
    return buf;
}

int tpm_http_head_check(const char *buf, size_t n, int *status_p, char *msg, size_t cap)
{
    const unsigned char *b   = (const unsigned char *)buf;
    size_t               lim = n < TPM_HTTP_HEAD_MAX ? n : TPM_HTTP_HEAD_MAX, i = 0, t0, v0, v1;
    long long            cl   = -1;
    int                  line = 1;
    char                 cb[8];
    const char          *ver = "HTTP/1.";

#define HEAD_NEED_MORE()                                                                           \
    do {                                                                                           \
        if (n > TPM_HTTP_HEAD_MAX) {                                                               \
            return head_bad(431, status_p, msg, cap,                                               \
                            "the request line and headers are longer than %d bytes",               \
                            TPM_HTTP_HEAD_MAX);                                                    \
        }                                                                                          \
        return 0;                                                                                  \
    } while (0)

    while (i < lim && (b[i] == '\r' || b[i] == '\n')) {
        i++; /* empty lines before the request line are allowed (RFC 9112 2.2) */
    }
    t0 = i;
    while (i < lim && head_tchar(b[i])) {
        i++;
    }
    if (i == lim) {
        HEAD_NEED_MORE();
    }
    if (i == t0 || b[i] != ' ') {
        return head_bad(400, status_p, msg, cap,
                        "malformed request line: byte %zu is %s where a method (a token) and a "
                        "space were expected",
                        i, head_byte(b[i], cb));
    }
    t0 = ++i;
    while (i < lim && b[i] > 0x20 && b[i] < 0x7f) {
        i++;
    }
    if (i == lim) {
        HEAD_NEED_MORE();
    }
    if (i == t0 || b[i] != ' ') {
        return head_bad(400, status_p, msg, cap,
                        "malformed request line: byte %zu is %s in or after the request target "
                        "(visible ASCII, then a space)",
                        i, head_byte(b[i], cb));
    }
    i++;
    for (size_t k = 0; ver[k] != '\0'; k++, i++) {
        if (i == lim) {
            HEAD_NEED_MORE();
        }
        if (b[i] != (unsigned char)ver[k] && k < 5) {
            return head_bad(400, status_p, msg, cap,
                            "malformed request line: byte %zu is %s where the version "
                            "(HTTP/1.0 or HTTP/1.1) was expected",
                            i, head_byte(b[i], cb));
        }
        if (b[i] != (unsigned char)ver[k]) {
            return head_bad(505, status_p, msg, cap,
                            "this server speaks HTTP/1.0 and HTTP/1.1 only (byte %zu is %s)", i,
                            head_byte(b[i], cb));
        }
    }
    if (i == lim) {
        HEAD_NEED_MORE();
    }
    if (b[i] != '0' && b[i] != '1') {
        return head_bad(505, status_p, msg, cap, "HTTP version 1.%c is not supported (1.0, 1.1)",
                        b[i] > 0x20 && b[i] < 0x7f ? b[i] : '?');
    }
    i++;
    if (i < lim && b[i] == '\r') {
        i++;
    }
    if (i == lim) {
        HEAD_NEED_MORE();
    }
    if (b[i] != '\n') {
        return head_bad(400, status_p, msg, cap,
                        "malformed request line: byte %zu is %s where CRLF was expected", i,
                        head_byte(b[i], cb));
    }
    i++;
    for (;;) {
        size_t h0 = i;

        line++;
        if (i < lim && b[i] == '\r') {
            i++;
        }
        if (i == lim) {
            HEAD_NEED_MORE();
        }
        if (b[i] == '\n') {
            return 1; /* the empty line: the head is complete */
        }
        i = h0;
        while (i < lim && head_tchar(b[i])) {
            i++;
        }
        if (i == lim) {
            HEAD_NEED_MORE();
        }
        if (i == h0 || b[i] != ':') {
            return head_bad(400, status_p, msg, cap,
                            "malformed header on line %d: byte %zu is %s where a field name (a "
                            "token) and ':' were expected",
                            line, i, head_byte(b[i], cb));
        }
        t0 = h0;
        v0 = ++i;
        while (i < lim && (b[i] == '\t' || (b[i] >= 0x20 && b[i] != 0x7f))) {
            i++;
        }
        if (i == lim) {
            HEAD_NEED_MORE();
        }
        v1 = i;
        if (b[i] == '\r') {
            i++;
            if (i == lim) {
                HEAD_NEED_MORE();
            }
        }
        if (b[i] != '\n') {
            return head_bad(400, status_p, msg, cap,
                            "malformed header '%.*s' on line %d: control byte %s in its value",
                            (int)(v0 - 1 - t0 < 64 ? v0 - 1 - t0 : 64), buf + t0, line,
                            head_byte(b[i], cb));
        }
        i++;
        if (v0 - 1 - t0 == 14 && strncasecmp(buf + t0, "Content-Length", 14) == 0) {
            long long v = 0;
            size_t    d = 0;

            while (v0 < v1 && (b[v0] == ' ' || b[v0] == '\t')) {
                v0++;
            }
            while (v1 > v0 && (b[v1 - 1] == ' ' || b[v1 - 1] == '\t')) {
                v1--;
            }
            /* at most 18 digits: below 2^63, so v cannot overflow (and no body is that big) */
            for (size_t k = v0; k < v1 && d < 18; k++, d++) {
                if (b[k] < '0' || b[k] > '9') {
                    d = 0;
                    break;
                }
                v = 10 * v + (b[k] - '0');
            }
            if (d == 0 || d != v1 - v0) {
                return head_bad(400, status_p, msg, cap,
                                "malformed Content-Length '%.*s': it must be a decimal number "
                                "of bytes (at most 18 digits)",
                                (int)(v1 - v0 < 64 ? v1 - v0 : 64), buf + v0);
            }
            if (cl >= 0 && v != cl) {
                return head_bad(400, status_p, msg, cap,
                                "conflicting Content-Length headers (%lld and %lld)", cl, v);
            }
            cl = v;
        }
    }
#undef HEAD_NEED_MORE
}

/* ---- the gate thread ---------------------------------------------------------------------------
 */

typedef struct {
    int                     fd; /* -1: free */
    int                     closing;
    double                  deadline;
    struct sockaddr_storage addr;
    socklen_t               alen;
} gate_conn_t;

struct tpm_http_gate {
    int                        lfd, epfd, wake[2];
    struct MHD_Daemon         *daemon;
    tpm_http_gate_count_func_t count;
    void                      *count_arg;
    pthread_t                  thread;
    gate_conn_t                conn[GATE_MAX_PENDING];
    char                       peek[TPM_HTTP_HEAD_MAX + 1];
};

static const char *gate_reason(int status)
{
    switch (status) {
    case 400: return "Bad Request";
    case 408: return "Request Timeout";
    case 431: return "Request Header Fields Too Large";
    case 503: return "Service Unavailable";
    case 505: return "HTTP Version Not Supported";
    default: return "Error";
    }
}

static void gate_close(tpm_http_gate_t *g, gate_conn_t *c)
{
    epoll_ctl(g->epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
}

/* read and drop what the client sent; 0 once it has closed its end */
static int gate_drain(int fd)
{
    char    sink[4096];
    ssize_t r;

    for (int k = 0; k < 64; k++) {
        r = recv(fd, sink, sizeof(sink), 0);
        if (r == 0) {
            return 0;
        }
        if (r < 0) {
            return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
        }
    }
    return 1;
}

/* answer @p status in OpenAI's error shape, then linger (reading) until the client closes */
static void gate_answer(tpm_http_gate_t *g, gate_conn_t *c, int status, const char *code,
                        const char *message)
{
    tpm_api_error_t err;
    char           *json = NULL, head[256];
    size_t          n    = 0;
    int             nh;

    tpm_log_warn("http: a new connection: %d %s", status, message);
    tpm_api_error_set(&err, status, status == 503 ? "server_error" : "invalid_request_error", code,
                      NULL, "%s", message);
    if (tpm_api_error_json(&err, &json, &n) == TPM_OK) {
        nh = snprintf(head, sizeof(head),
                      "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: "
                      "%zu\r\nConnection: close\r\n\r\n",
                      status, gate_reason(status), n);
        (void)gate_drain(c->fd);
        /* small and the first bytes on this socket: the send buffer takes them at once */
        if (send(c->fd, head, (size_t)nh, MSG_NOSIGNAL) == nh) {
            (void)send(c->fd, json, n, MSG_NOSIGNAL);
        }
        free(json);
    }
    if (g->count != NULL) {
        g->count(g->count_arg, status);
    }
    shutdown(c->fd, SHUT_WR);
    c->closing  = 1;
    c->deadline = tpm_time_now() + GATE_LINGER_S;
    if (!gate_drain(c->fd)) {
        gate_close(g, c);
    }
}

/* new bytes on a waiting connection (or its deadline): hand over, answer, or wait */
static void gate_check(tpm_http_gate_t *g, gate_conn_t *c)
{
    char    msg[256];
    int     status = 400, verdict;
    ssize_t r;

    if (c->closing) {
        if (!gate_drain(c->fd)) {
            gate_close(g, c);
        }
        return;
    }
    r = recv(c->fd, g->peek, sizeof(g->peek), MSG_PEEK);
    if (r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
        gate_close(g, c); /* the client left before sending a request */
        return;
    }
    if (r < 0) {
        return;
    }
    verdict = tpm_http_head_check(g->peek, (size_t)r, &status, msg, sizeof(msg));
    if (verdict > 0) {
        int fd = c->fd;

        epoll_ctl(g->epfd, EPOLL_CTL_DEL, fd, NULL);
        c->fd = -1;
        /* libmicrohttpd owns the socket from here, also when it refuses it (it closes it) */
        if (MHD_add_connection(g->daemon, fd, (struct sockaddr *)&c->addr, c->alen) != MHD_YES) {
            tpm_log_warn("http: libmicrohttpd refused a connection (connection limit?): %s",
                         strerror(errno));
        }
    } else if (verdict < 0) {
        gate_answer(g, c, status, status == 431 ? "request_too_large" : NULL, msg);
    }
}

static void gate_accept(tpm_http_gate_t *g)
{
    for (;;) {
        struct sockaddr_storage addr;
        socklen_t               alen = sizeof(addr);
        gate_conn_t            *c    = NULL;
        struct epoll_event      ev;
        int                     fd;

        fd = accept4(g->lfd, (struct sockaddr *)&addr, &alen, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR &&
                errno != ECONNABORTED) {
                tpm_log_warn("http: accept failed: %s", strerror(errno));
            }
            return;
        }
        for (int k = 0; k < GATE_MAX_PENDING && c == NULL; k++) {
            if (g->conn[k].fd < 0) {
                c = &g->conn[k];
            }
        }
        if (c == NULL) {
            gate_conn_t tmp = {.fd = fd};

            /* not registered with epoll: answer and close at once */
            gate_answer(g, &tmp, 503, "server_busy",
                        "too many connections are waiting to send their request; retry later");
            if (tmp.fd >= 0) {
                close(tmp.fd);
            }
            continue;
        }
        memset(c, 0, sizeof(*c));
        c->fd       = fd;
        c->addr     = addr;
        c->alen     = alen;
        c->deadline = tpm_time_now() + TPM_HTTP_HEAD_TIMEOUT_S;
        ev.events   = EPOLLIN | EPOLLRDHUP | EPOLLET;
        ev.data.u32 = (uint32_t)(c - g->conn);
        if (epoll_ctl(g->epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
            tpm_log_warn("http: epoll_ctl failed: %s", strerror(errno));
            close(fd);
            c->fd = -1;
            continue;
        }
        gate_check(g, c); /* the head may be there already */
    }
}

static void *gate_main(void *arg)
{
    tpm_http_gate_t   *g = arg;
    struct epoll_event ev[64];

    for (;;) {
        double now = tpm_time_now(), next = now + 1.0;
        int    n, timeout_ms;

        for (int k = 0; k < GATE_MAX_PENDING; k++) {
            gate_conn_t *c = &g->conn[k];

            if (c->fd < 0) {
                continue;
            }
            if (c->deadline <= now) {
                if (c->closing) {
                    gate_close(g, c);
                } else {
                    char msg[128];

                    snprintf(msg, sizeof(msg),
                             "the request line and headers did not arrive within %d s of "
                             "connecting",
                             TPM_HTTP_HEAD_TIMEOUT_S);
                    gate_answer(g, c, 408, NULL, msg);
                }
            }
            if (c->fd >= 0 && c->deadline < next) {
                next = c->deadline;
            }
        }
        timeout_ms = (int)((next - now) * 1e3) + 1;
        n          = epoll_wait(g->epfd, ev, 64, timeout_ms < 1 ? 1 : timeout_ms);
        for (int k = 0; k < n; k++) {
            uint32_t id = ev[k].data.u32;

            if (id == GATE_EV_WAKE) {
                return NULL;
            }
            if (id == GATE_EV_LISTEN) {
                gate_accept(g);
            } else if (id < GATE_MAX_PENDING && g->conn[id].fd >= 0) {
                gate_check(g, &g->conn[id]);
            }
        }
    }
}

tpm_status_t tpm_http_gate_start(const struct addrinfo *ai, struct MHD_Daemon *daemon,
                                 tpm_http_gate_count_func_t count, void *count_arg,
                                 unsigned *port_p, tpm_http_gate_t **g_p)
{
    tpm_http_gate_t        *g;
    struct epoll_event      ev;
    struct sockaddr_storage sa;
    socklen_t               salen = sizeof(sa);
    int                     one   = 1;

    g = calloc(1, sizeof(*g));
    if (g == NULL) {
        tpm_log_error("http: out of memory");
        return TPM_ERR_NO_MEMORY;
    }
    g->daemon    = daemon;
    g->count     = count;
    g->count_arg = count_arg;
    g->epfd = g->wake[0] = g->wake[1] = -1;
    for (int k = 0; k < GATE_MAX_PENDING; k++) {
        g->conn[k].fd = -1;
    }
    g->lfd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (g->lfd < 0 || setsockopt(g->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
        bind(g->lfd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(g->lfd, 512) != 0 ||
        getsockname(g->lfd, (struct sockaddr *)&sa, &salen) != 0) {
        tpm_log_error("http: cannot listen (address in use, or not an address of this host?): "
                      "%s",
                      strerror(errno));
        goto err;
    }
    *port_p = ntohs(sa.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&sa)->sin6_port
                                             : ((struct sockaddr_in *)&sa)->sin_port);
    g->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (g->epfd < 0 || pipe2(g->wake, O_CLOEXEC | O_NONBLOCK) != 0) {
        tpm_log_error("http: epoll/pipe failed: %s", strerror(errno));
        goto err;
    }
    ev.events   = EPOLLIN;
    ev.data.u32 = GATE_EV_LISTEN;
    if (epoll_ctl(g->epfd, EPOLL_CTL_ADD, g->lfd, &ev) != 0) {
        goto err_epoll;
    }
    ev.data.u32 = GATE_EV_WAKE;
    if (epoll_ctl(g->epfd, EPOLL_CTL_ADD, g->wake[0], &ev) != 0) {
        goto err_epoll;
    }
    if (pthread_create(&g->thread, NULL, gate_main, g) != 0) {
        tpm_log_error("http: cannot start the accept thread");
        goto err;
    }
    *g_p = g;
    return TPM_OK;

err_epoll:
    tpm_log_error("http: epoll_ctl failed: %s", strerror(errno));
err:
    if (g->lfd >= 0) {
        close(g->lfd);
    }
    if (g->epfd >= 0) {
        close(g->epfd);
    }
    if (g->wake[0] >= 0) {
        close(g->wake[0]);
        close(g->wake[1]);
    }
    free(g);
    return TPM_ERR_IO;
}

void tpm_http_gate_stop(tpm_http_gate_t *g)
{
    if (g == NULL) {
        return;
    }
    if (write(g->wake[1], "x", 1) != 1) {
        tpm_log_warn("http: cannot wake the accept thread: %s", strerror(errno));
    }
    pthread_join(g->thread, NULL);
    for (int k = 0; k < GATE_MAX_PENDING; k++) {
        if (g->conn[k].fd >= 0) {
            close(g->conn[k].fd);
        }
    }
    close(g->lfd);
    close(g->epfd);
    close(g->wake[0]);
    close(g->wake[1]);
    free(g);
}
