#include "transport.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>
#include <openssl/crypto.h>

#include "error.h"
#include "util.h"
#include "wipe.h"

/* libcurl copies headers into buffers of its own and frees them without
 * wiping; freeing through wipe_free() wipes every block first, so the bearer
 * token does not outlive the request in freed heap memory. */
int transport_global_init(void)
{
	if (curl_global_init_mem(CURL_GLOBAL_DEFAULT, malloc, wipe_free, wipe_realloc, strdup,
				 calloc) != CURLE_OK)
		return PS_E_INTERNAL;
	return 0;
}

void transport_global_cleanup(void)
{
	curl_global_cleanup();
}

bool transport_url_has(CURLU *u, CURLUPart part)
{
	char *v = NULL;
	bool has = curl_url_get(u, part, &v, 0) == CURLUE_OK && v && v[0];

	curl_free(v);
	return has;
}

const char *transport_url_extra(CURLU *u)
{
	char *path = NULL;
	bool path_ok;

	if (transport_url_has(u, CURLUPART_USER) || transport_url_has(u, CURLUPART_PASSWORD))
		return "a user or password does not belong in the URL";
	if (transport_url_has(u, CURLUPART_QUERY) || transport_url_has(u, CURLUPART_FRAGMENT))
		return "a query or fragment does not belong in the URL";
	if (curl_url_get(u, CURLUPART_PATH, &path, 0) != CURLUE_OK)
		return "not a valid URL";
	path_ok = path[0] == '\0' || strcmp(path, "/") == 0;
	curl_free(path);
	return path_ok ? NULL : "a path does not belong in the URL";
}

void transport_response_clear(struct transport_response *r)
{
	if (!r)
		return;
	/* The body may be an access token answer from Azure AD. */
	wipe_free(r->body);
	free(r->content_type);
	free(r->retry_after);
	*r = (struct transport_response){0};
}

struct body {
	char *data;
	size_t len, cap, max;
	bool overflow, nomem;
};

static size_t body_write(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	struct body *b = userdata;
	size_t n = size * nmemb;
	char *d;

	/* Checked while the body streams in: a huge answer never sits in memory. */
	if (n > b->max - b->len) {
		b->overflow = true;
		return 0;
	}
	if (b->len + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 4096;

		while (cap < b->len + n + 1)
			cap *= 2;
		/* Not realloc(): an access token must not stay in the old block. */
		d = wipe_realloc(b->data, cap);
		if (!d) {
			b->nomem = true;
			return 0;
		}
		b->data = d;
		b->cap = cap;
	}
	memcpy(b->data + b->len, ptr, n);
	b->len += n;
	b->data[b->len] = '\0';
	return n;
}

static int headers_append(struct curl_slist **list, const char *line)
{
	struct curl_slist *l = curl_slist_append(*list, line);

	if (!l)
		return PS_E_NOMEM;
	*list = l;
	return 0;
}

/* Wipes every line before freeing: one of them may carry the token, and this
 * must hold even if transport_global_init() was not called. */
static void headers_free(struct curl_slist *list)
{
	for (struct curl_slist *l = list; l; l = l->next)
		OPENSSL_cleanse(l->data, strlen(l->data));
	curl_slist_free_all(list);
}

static int headers_append_bearer(struct curl_slist **list, const struct secret *bearer)
{
	static const char prefix[] = "Authorization: Bearer ";
	size_t n = sizeof(prefix) + bearer->len;
	char *line = malloc(n);
	int r;

	if (!line)
		return PS_E_NOMEM;
	memcpy(line, prefix, sizeof(prefix) - 1);
	memcpy(line + sizeof(prefix) - 1, bearer->data, bearer->len);
	line[n - 1] = '\0';
	r = headers_append(list, line);
	OPENSSL_cleanse(line, n);
	free(line);
	return r;
}

static int headers_build(const struct transport_request *req, struct curl_slist **ret)
{
	struct curl_slist *list = NULL;
	char line[256];
	int r = 0;

	if (req->accept && snprintf(line, sizeof(line), "Accept: %s", req->accept) < (int)sizeof(line))
		r = headers_append(&list, line);
	/* Without a type of ours, drop the form type libcurl adds to bodies. */
	if (r == 0 && req->content_type &&
	    snprintf(line, sizeof(line), "Content-Type: %s", req->content_type) < (int)sizeof(line))
		r = headers_append(&list, line);
	else if (r == 0 && !req->content_type)
		r = headers_append(&list, "Content-Type:");
	if (r == 0)
		r = headers_append(&list, "Expect:");
	for (size_t i = 0; r == 0 && req->headers && req->headers[i]; i++)
		r = headers_append(&list, req->headers[i]);
	if (r == 0 && req->bearer)
		r = headers_append_bearer(&list, req->bearer);
	if (r < 0) {
		headers_free(list);
		return r;
	}
	*ret = list;
	return 0;
}

/* The limits every request gets.  Each failed setopt sets bits in rc; which
 * one failed does not matter, only that the handle is not as asked. */
static int set_limits(CURL *h, const struct transport_request *req)
{
	int rc = 0;

	rc |= curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
	rc |= curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, req->connect_timeout_s);
	rc |= curl_easy_setopt(h, CURLOPT_TIMEOUT, req->timeout_s);
	rc |= curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, req->protocols);
	rc |= curl_easy_setopt(h, CURLOPT_REDIR_PROTOCOLS_STR, req->protocols);
	rc |= curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L);
	rc |= curl_easy_setopt(h, CURLOPT_MAXREDIRS, 0L);
	/* Explicit, though they are libcurl's defaults: no build or
	 * environment may loosen them. */
	rc |= curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, 1L);
	rc |= curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 2L);
	rc |= curl_easy_setopt(h, CURLOPT_PROXY_SSL_VERIFYPEER, 1L);
	rc |= curl_easy_setopt(h, CURLOPT_PROXY_SSL_VERIFYHOST, 2L);
	/* An empty proxy overrides http_proxy and friends: the token goes
	 * straight to the server named, never through a proxy.  Left unset,
	 * libcurl reads the proxy variables itself. */
	if (!req->env_proxy)
		rc |= curl_easy_setopt(h, CURLOPT_PROXY, "");
	rc |= curl_easy_setopt(h, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)req->max_response);
	/* Paths go out as built: no squashing of "/../" in key names. */
	rc |= curl_easy_setopt(h, CURLOPT_PATH_AS_IS, 1L);
	rc |= curl_easy_setopt(h, CURLOPT_USERAGENT, "popsign/" POPSIGN_VERSION);
	return rc == 0 ? 0 : PS_E_INTERNAL;
}

static int set_request(CURL *h, const struct transport_request *req, struct curl_slist *headers,
		       struct body *b, char *errbuf)
{
	int rc = 0;

	rc |= curl_easy_setopt(h, CURLOPT_URL, req->url);
	if (req->unix_socket)
		rc |= curl_easy_setopt(h, CURLOPT_UNIX_SOCKET_PATH, req->unix_socket);
	rc |= curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);
	rc |= curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, body_write);
	rc |= curl_easy_setopt(h, CURLOPT_WRITEDATA, b);
	rc |= curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
	if (strcmp(req->method, "GET") != 0) {
		/* An empty body still sends "Content-Length: 0", as ARM wants. */
		rc |= curl_easy_setopt(h, CURLOPT_POSTFIELDS, req->body ? req->body : "");
		rc |= curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE,
				       (curl_off_t)(req->body ? req->body_len : 0));
		if (strcmp(req->method, "POST") != 0)
			rc |= curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, req->method);
	}
	return rc == 0 ? 0 : PS_E_INTERNAL;
}

static int map_curl_error(CURL *h, CURLcode rc, const struct body *b)
{
	const char *ip = NULL;

	if (b->overflow)
		return PS_E_TOO_LARGE;
	if (b->nomem)
		return PS_E_NOMEM;
	switch (rc) {
	case CURLE_OPERATION_TIMEDOUT:
		return PS_E_TIMEOUT;
	case CURLE_FILESIZE_EXCEEDED:
		return PS_E_TOO_LARGE;
	case CURLE_OUT_OF_MEMORY:
		return PS_E_NOMEM;
	case CURLE_UNSUPPORTED_PROTOCOL:
		/* Also what an HTTP/0.9 answer (any non-HTTP server) gets: with a
		 * connection made, the scheme was fine and the answer was not. */
		if (curl_easy_getinfo(h, CURLINFO_PRIMARY_IP, &ip) == CURLE_OK && ip && ip[0])
			return PS_E_INVALID_REQUEST;
		return PS_E_UNSUPPORTED;
	case CURLE_WEIRD_SERVER_REPLY:
		return PS_E_INVALID_REQUEST;
	case CURLE_URL_MALFORMAT:
	case CURLE_BAD_FUNCTION_ARGUMENT:
		return PS_E_INTERNAL;
	default:
		return PS_E_IO;
	}
}

/* A copy of the Retry-After header of the answer, or NULL without one. */
static int take_retry_after(CURL *h, char **ret)
{
	struct curl_header *hdr = NULL;

	*ret = NULL;
	if (curl_easy_header(h, "Retry-After", 0, CURLH_HEADER, -1, &hdr) != CURLHE_OK || !hdr)
		return 0;
	*ret = strdup(hdr->value);
	return *ret ? 0 : PS_E_NOMEM;
}

static int take_response(CURL *h, struct body *b, struct transport_response *ret)
{
	_cleanup_free_ char *ctcopy = NULL, *retry_after = NULL;
	const char *ct = NULL;
	long status = 0;

	if (curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status) != CURLE_OK)
		return PS_E_INTERNAL;
	if (curl_easy_getinfo(h, CURLINFO_CONTENT_TYPE, &ct) == CURLE_OK && ct) {
		ctcopy = strdup(ct);
		if (!ctcopy)
			return PS_E_NOMEM;
	}
	if (take_retry_after(h, &retry_after) < 0)
		return PS_E_NOMEM;
	if (!b->data) {
		b->data = calloc(1, 1);
		if (!b->data)
			return PS_E_NOMEM; /* NOLINT(clang-analyzer-unix.Malloc): _cleanup_free_ */
	}
	ret->status = status;
	ret->body = TAKE_PTR(b->data);
	ret->body_len = b->len;
	ret->content_type = TAKE_PTR(ctcopy);
	ret->retry_after = TAKE_PTR(retry_after);
	return 0;
}

int transport_perform(const struct transport_request *req, struct transport_response *ret,
		      char errbuf[TRANSPORT_ERROR_MAX])
{
	struct body b = {.max = req->max_response};
	struct curl_slist *headers = NULL;
	CURL *h = NULL;
	CURLcode rc;
	int r;

	errbuf[0] = '\0';
	h = curl_easy_init();
	if (!h) {
		snprintf(errbuf, TRANSPORT_ERROR_MAX, "cannot set up libcurl");
		return PS_E_NOMEM;
	}
	r = headers_build(req, &headers);
	if (r == 0)
		r = set_limits(h, req);
	if (r == 0)
		r = set_request(h, req, headers, &b, errbuf);
	if (r < 0) {
		if (!errbuf[0])
			snprintf(errbuf, TRANSPORT_ERROR_MAX, "cannot set up the request");
		goto out;
	}
	rc = curl_easy_perform(h);
	if (rc != CURLE_OK) {
		r = map_curl_error(h, rc, &b);
		if (b.overflow)
			snprintf(errbuf, TRANSPORT_ERROR_MAX, "the response is larger than %zu bytes",
				 req->max_response);
		else if (!errbuf[0])
			snprintf(errbuf, TRANSPORT_ERROR_MAX, "%s", curl_easy_strerror(rc));
		goto out;
	}
	r = take_response(h, &b, ret);
out:
	curl_easy_cleanup(h);
	headers_free(headers);
	wipe_free(b.data);
	return r;
}
