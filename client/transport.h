/* HTTP requests over libcurl, shared by everything in the client that talks
 * to a server: popsignd, Azure Resource Manager, Azure AD and the instance
 * metadata endpoint.
 *
 * Every request has hard limits: a connect timeout, a total timeout, a
 * response size cap, an explicit protocol list and no redirects.  TLS peer
 * and host name verification are always on; nothing here can turn them off.
 * Proxies are off unless the request asks for the environment's (only the
 * Azure client does, and only for https:// URLs, where the proxy sees a
 * CONNECT tunnel and never the token).  Memory libcurl frees is wiped first,
 * so copies it makes of a bearer token (the Authorization header, its
 * request buffer) do not linger in the heap. */
#ifndef POPSIGN_TRANSPORT_H
#define POPSIGN_TRANSPORT_H

#include <stdbool.h>
#include <stddef.h>

#include <curl/curl.h>

#include "secret.h"

/* Room for libcurl's description of a failed transfer (CURL_ERROR_SIZE). */
#define TRANSPORT_ERROR_MAX 256

struct transport_request {
	const char *method;          /* "GET", "POST", "PUT", "DELETE" */
	const char *url;             /* absolute URL */
	const char *unix_socket;     /* connect to this Unix socket instead, or NULL */
	const char *accept;          /* Accept header, or NULL for none */
	const char *content_type;    /* Content-Type of body, or NULL */
	const char *body;            /* request body, or NULL for none */
	size_t body_len;
	const struct secret *bearer; /* sent as "Authorization: Bearer ...", or NULL */
	const char *const *headers;  /* more "Name: value" lines, NULL-terminated, or NULL */
	const char *protocols;       /* allowed schemes, e.g. "http" or "https" */
	bool env_proxy;              /* honour https_proxy, all_proxy, no_proxy ...;
				      * false: no proxy whatever the environment says */
	long connect_timeout_s;      /* > 0 */
	long timeout_s;              /* > 0, the whole transfer */
	size_t max_response;         /* larger response bodies fail the request */
};

struct transport_response {
	long status;        /* HTTP status */
	char *body;         /* NUL-terminated (the body itself may hold NULs) */
	size_t body_len;
	char *content_type; /* as the server sent it, or NULL */
	char *retry_after;  /* the Retry-After header's value, or NULL */
};

/* Sets up libcurl with the wiping allocator.  Call once, before any other
 * transport or libcurl call and before threads start.  Returns 0, or
 * PS_E_INTERNAL if libcurl cannot be initialised. */
int transport_global_init(void);

/* Releases libcurl's global state.  Safe without a successful init. */
void transport_global_cleanup(void);

/* Performs req.  Returns 0 once any HTTP answer arrived, whatever its status,
 * and fills *ret (free its members with transport_response_clear()).  On
 * failure *ret is untouched, errbuf says what failed (never the token), and
 * the return value says how:
 *   PS_E_IO            no connection, or it broke before a whole answer
 *   PS_E_TIMEOUT       the connect or total timeout ran out
 *   PS_E_TOO_LARGE     the response body exceeds req->max_response
 *   PS_E_INVALID_REQUEST  the server's answer is not HTTP
 *   PS_E_UNSUPPORTED   the URL's scheme is not in req->protocols
 *   PS_E_NOMEM, PS_E_INTERNAL  local failures */
int transport_perform(const struct transport_request *req, struct transport_response *ret,
		      char errbuf[TRANSPORT_ERROR_MAX]);

/* Frees the members of r and zeroes it.  Accepts NULL and a zeroed r. */
void transport_response_clear(struct transport_response *r);

/* Whether the parsed URL u has a non-empty part (a user, a query, ...). */
bool transport_url_has(CURLU *u, CURLUPart part);

/* Why the parsed URL u is more than an origin (scheme, host, port): a user,
 * password, query, fragment or path other than "/"; NULL if it is not. */
const char *transport_url_extra(CURLU *u);

/* For _cleanup_(): frees a CURLU.  Accepts a NULL one. */
static inline void curl_url_cleanupp(CURLU **u)
{
	curl_url_cleanup(*u);
}

#endif
