/* HTTP to Azure: which endpoint URLs are acceptable, and sending a request
 * with the retry policy of retry.h.
 *
 * Azure endpoints (Resource Manager, Azure AD) are https:// with TLS peer
 * and host verification always on; plain http:// is accepted only for a
 * loopback host (127.0.0.0/8, ::1, localhost), which is where test doubles
 * live.  The instance metadata endpoint is plain http:// by design and may
 * be anywhere.  https:// requests honour the usual proxy variables
 * (https_proxy, HTTPS_PROXY, all_proxy, no_proxy): behind a proxy the token
 * stays inside the TLS tunnel.  Plain http:// requests never use a proxy. */
#ifndef POPSIGN_AZURE_HTTP_H
#define POPSIGN_AZURE_HTTP_H

#include <stdbool.h>
#include <stddef.h>

#include "azure_error.h"
#include "secret.h"
#include "transport.h"

#define AZURE_URL_MAX 2048
#define AZURE_CONNECT_TIMEOUT_S 10L
#define AZURE_TIMEOUT_S 30L                  /* one try; the budget caps it too */
#define AZURE_RESPONSE_MAX (4 * 1024 * 1024)

enum azure_url_policy {
	AZURE_URL_HTTPS,      /* https://, or http:// to a loopback host */
	AZURE_URL_ANY_HTTP,   /* https:// or http:// to any host (metadata endpoint) */
};

/* True if host (as a URL holds it: "localhost", "127.0.0.2", "[::1]") is a
 * loopback host. */
bool azure_host_is_loopback(const char *host);

/* Checks an endpoint URL against policy and reduces it to its origin,
 * "https://HOST[:PORT]": no user, password, query or fragment, at most "/"
 * as path.  Returns 0 and *ret (free()), PS_E_INVALID_REQUEST with *why set
 * to a static reason, or PS_E_NOMEM; *ret untouched on failure. */
int azure_url_check(const char *url, enum azure_url_policy policy, char **ret, const char **why);

/* One request to Azure; the URL must have passed azure_url_check(). */
struct azure_http_request {
	const char *what;           /* who answers, for messages: "Azure Resource Manager" */
	const char *method;
	const char *url;
	const char *content_type;   /* of body, or NULL */
	const char *body;           /* or NULL */
	size_t body_len;
	const char *const *headers; /* more header lines, NULL-terminated, or NULL */
	const struct secret *bearer; /* or NULL */
};

/* Sends req, trying again as retry.h says; each new try is announced on
 * stderr with the reason and the wait.  Returns 0 with the last answer in
 * *ret (any status: a 503 after the last try is an answer too; free with
 * transport_response_clear()) and the number of tries in *ret_tries.  On
 * failure *ret is untouched, *err says why (AZURE_FAILURE_UNREACHABLE
 * after the tries, AZURE_FAILURE_MALFORMED for an answer too large or not
 * HTTP, AZURE_FAILURE_INTERNAL) with its tries, and a PS_E_* is returned. */
int azure_http_send(const struct azure_http_request *req, struct transport_response *ret,
		    unsigned *ret_tries, struct azure_error *err);

#endif
