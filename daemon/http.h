/* The HTTP front end: libmicrohttpd, routes, callers, limits, the audit
 * trail, JSON in and out, the fixed error table. */
#ifndef POPSIGN_HTTP_H
#define POPSIGN_HTTP_H

#include <stddef.h>

#include "audit.h"
#include "config.h"
#include "signer.h"

#define HTTP_BODY_MAX 4096

struct http_server;

/* Starts serving.  Listens on listen_fds (n_fds sockets handed over by
 * systemd, already bound) or, when n_fds is 0, binds cfg's listen addresses
 * (Unix sockets get cfg's socket_mode and socket_group).  Logs each address
 * ("listening on 127.0.0.1:PORT").  Takes ownership of cfg and signer; audit
 * (may be NULL) must outlive the server.  Returns 0 and *ret, or PS_E_IO
 * (logged); on failure cfg and signer are freed. */
int http_start(struct config *cfg, struct signer *signer, struct audit *audit,
	       const int *listen_fds, size_t n_fds, struct http_server **ret);

/* Serves cfg and signer from now on: requests already running finish with
 * the old ones, which are freed after the last of them.  Listen addresses,
 * workers and connection limits keep their start-up values.  Takes
 * ownership of cfg and signer. */
void http_reload(struct http_server *srv, struct config *cfg, struct signer *signer);

/* Whether the current signer is up (for the watchdog). */
bool http_signer_alive(struct http_server *srv);

/* Stops accepting, finishes requests in flight and frees srv with its
 * config and signer.  Accepts NULL. */
void http_stop(struct http_server *srv);

#endif
