/* SPDX-License-Identifier: MIT */
/*
 * http_gate.h: the listening socket of the HTTP front-end, in front of libmicrohttpd.
 * A new connection is handed to libmicrohttpd (MHD_add_connection) only once its request
 * head (request line and headers) has arrived and is well-formed. A malformed head is
 * answered at once in OpenAI's JSON error shape and closed: libmicrohttpd 0.9.75 would
 * hold some of them (a request line starting with NUL reads as an empty line to it) until
 * its idle timeout, close others without an answer, and answer the rest in HTML. A head
 * that is not complete within TPM_HTTP_HEAD_TIMEOUT_S gets 408. Later requests on a
 * kept-alive connection are libmicrohttpd's alone.
 */
#ifndef TPM_SERVE_HTTP_GATE_H
#define TPM_SERVE_HTTP_GATE_H

#include <stddef.h>

#include "base/status.h"

#define TPM_HTTP_HEAD_MAX       16384 /* request line + headers, bytes; more is 431 */
#define TPM_HTTP_HEAD_TIMEOUT_S 10    /* a new connection must send its head within this */

struct addrinfo;
struct MHD_Daemon;

/**
 * Check the start of a connection's bytes @p buf (@p n bytes, of which at most
 * TPM_HTTP_HEAD_MAX are looked at): 1 the head is complete and well-formed; 0 it is a
 * well-formed prefix (wait for more; n > TPM_HTTP_HEAD_MAX is never 0); -1 it is not,
 * with *status_p (400, 431, 505) and a message (NUL-terminated, at most @p cap bytes)
 * saying what is wrong. Checked: leading empty lines are skipped; the request line is
 * METHOD SP TARGET SP HTTP/1.x with a token method and a visible-ASCII target; each header
 * is a token name, ':', a value without control characters (TAB allowed); Content-Length,
 * where given, is digits and agrees with any repetition. Pure: no I/O.
 */
int tpm_http_head_check(const char *buf, size_t n, int *status_p, char *msg, size_t cap);

typedef struct tpm_http_gate tpm_http_gate_t;

/** Called from the gate thread for each connection the gate answers itself. */
typedef void (*tpm_http_gate_count_func_t)(void *arg, int http_status);

/**
 * Bind and listen on @p ai (the first address), and start the gate thread, which hands
 * well-formed connections to @p daemon (started with MHD_USE_NO_LISTEN_SOCKET). The bound
 * port goes to *port_p. @p count (optional) is told the status of every answer the gate
 * sends. Caller owns *g_p.
 */
tpm_status_t tpm_http_gate_start(const struct addrinfo *ai, struct MHD_Daemon *daemon,
                                 tpm_http_gate_count_func_t count, void *count_arg,
                                 unsigned *port_p, tpm_http_gate_t **g_p);

/** Stop accepting: join the thread, close the listening socket and the connections still
 *  waiting for their head. No-op on NULL. */
void tpm_http_gate_stop(tpm_http_gate_t *g);

#endif /* TPM_SERVE_HTTP_GATE_H */
