/* The HTTP front end: libmicrohttpd, routes, JSON in and out, error bodies. */
#ifndef POPSIGN_HTTP_H
#define POPSIGN_HTTP_H

#include "config.h"
#include "signer.h"

#define HTTP_BODY_MAX 4096

struct http_server;

/* Starts serving cfg's listen addresses with cfg->workers threads; cfg and
 * signer must outlive the server.  Logs each bound address ("listening on
 * 127.0.0.1:PORT").  Returns 0 and *ret, or PS_E_IO (bind failed, logged). */
int http_start(const struct config *cfg, struct signer *signer, struct http_server **ret);

/* Stops accepting, finishes requests in flight and frees srv.  Accepts NULL. */
void http_stop(struct http_server *srv);

#endif
