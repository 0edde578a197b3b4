#include "http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <jansson.h>
#include <microhttpd.h>

#include "auth.h"
#include "code.h"
#include "error.h"
#include "log.h"
#include "request.h"
#include "text.h"
#include "util.h"

#define HTTP_CONNECTION_LIMIT 256
#define HTTP_CONNECTION_TIMEOUT 10 /* seconds */
#define HTTP_MEMORY_LIMIT (32 * 1024) /* per connection: bounds the request headers */
#define MEDIA_JSON "application/json"
#define MEDIA_PEM "application/x-pem-file"

struct request;
typedef enum MHD_Result (*handler_fn)(struct http_server *srv, struct request *req,
				      struct MHD_Connection *conn);

struct route {
	const char *pattern;    /* path segments; "{key}" matches a key name */
	const char *method;     /* the one method served (GET also answers HEAD) */
	bool auth;
	bool has_body;
	handler_fn handler;
};

struct request {
	const struct route *route;
	const struct config_client *client;
	char key[CONFIG_NAME_MAX + 1];
	size_t key_index;
	bool too_large;
	size_t body_len;
	char body[HTTP_BODY_MAX + 1];
};

struct http_server {
	const struct config *cfg;
	struct signer *signer;
	struct MHD_Daemon *daemons[CONFIG_LISTEN_MAX];
	size_t n_daemons;
};

static enum MHD_Result handle_healthz(struct http_server *, struct request *, struct MHD_Connection *);
static enum MHD_Result handle_keys(struct http_server *, struct request *, struct MHD_Connection *);
static enum MHD_Result handle_key(struct http_server *, struct request *, struct MHD_Connection *);
static enum MHD_Result handle_key_certificate(struct http_server *, struct request *,
					      struct MHD_Connection *);
static enum MHD_Result handle_sign(struct http_server *, struct request *, struct MHD_Connection *);

static const struct route routes[] = {
	{"/healthz", "GET", false, false, handle_healthz},
	{"/v1/keys", "GET", true, false, handle_keys},
	{"/v1/keys/{key}", "GET", true, false, handle_key},
	{"/v1/keys/{key}/certificate", "GET", true, false, handle_key_certificate},
	{"/v1/keys/{key}/verification-certificates", "POST", true, true, handle_sign},
};

/* ---- responses ---------------------------------------------------------- */

static void add_common_headers(struct MHD_Response *resp, const char *content_type)
{
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
	MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
}

static enum MHD_Result queue(struct MHD_Connection *conn, unsigned status, struct MHD_Response *resp)
{
	enum MHD_Result ret;

	if (!resp)
		return MHD_NO;
	ret = MHD_queue_response(conn, status, resp);
	MHD_destroy_response(resp);
	return ret;
}

static enum MHD_Result respond_text(struct MHD_Connection *conn, unsigned status,
				    const char *content_type, const char *text)
{
	struct MHD_Response *resp = MHD_create_response_from_buffer(
		strlen(text), (void *)(uintptr_t)text, MHD_RESPMEM_MUST_COPY);

	if (resp)
		add_common_headers(resp, content_type);
	return queue(conn, status, resp);
}

/* Sends body (stolen) as JSON. */
static enum MHD_Result respond_json(struct MHD_Connection *conn, unsigned status, json_t *body)
{
	char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
	struct MHD_Response *resp;
	size_t len;

	json_decref(body);
	if (!text)
		return MHD_NO;
	len = strlen(text);
	text[len] = '\n';
	resp = MHD_create_response_from_buffer(len + 1, text, MHD_RESPMEM_MUST_FREE);
	if (!resp) {
		free(text);
		return MHD_NO;
	}
	add_common_headers(resp, MEDIA_JSON);
	return queue(conn, status, resp);
}

/* The fixed error body for err; detail (optional) replaces the table's
 * sentence with something more specific. */
static enum MHD_Result respond_error(struct MHD_Connection *conn, const struct request *req,
				     int err, const char *detail)
{
	json_t *body = json_pack("{s:{s:s,s:s}}", "error", "code", ps_error_code(err), "message",
				 detail ? detail : ps_strerror(err));
	char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
	unsigned status = (unsigned)ps_error_http_status(err);
	struct MHD_Response *resp;

	json_decref(body);
	if (!text)
		return MHD_NO;
	resp = MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
	if (!resp) {
		free(text);
		return MHD_NO;
	}
	add_common_headers(resp, MEDIA_JSON);
	if (status == MHD_HTTP_UNAUTHORIZED)
		MHD_add_response_header(resp, MHD_HTTP_HEADER_WWW_AUTHENTICATE,
					"Bearer realm=\"popsignd\"");
	if (status == MHD_HTTP_METHOD_NOT_ALLOWED && req && req->route)
		MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW,
					strcmp(req->route->method, "GET") == 0 ? "GET, HEAD"
									       : req->route->method);
	return queue(conn, status, resp);
}

/* ---- routing ------------------------------------------------------------ */

/* Matches url against pattern segment by segment; "{key}" takes one
 * non-empty segment of at most CONFIG_NAME_MAX bytes into key. */
static bool route_match(const char *pattern, const char *url, char key[CONFIG_NAME_MAX + 1],
			bool *key_too_long)
{
	while (*pattern && *url) {
		if (strncmp(pattern, "{key}", 5) == 0) {
			size_t n = strcspn(url, "/");

			if (n == 0)
				return false;
			*key_too_long = n > CONFIG_NAME_MAX;
			if (!*key_too_long) {
				memcpy(key, url, n);
				key[n] = '\0';
			}
			pattern += 5;
			url += n;
			continue;
		}
		if (*pattern != *url)
			return false;
		pattern++;
		url++;
	}
	return *pattern == '\0' && *url == '\0';
}

static const struct route *route_find(const char *url, char key[CONFIG_NAME_MAX + 1],
				      bool *key_too_long)
{
	for (size_t i = 0; i < ELEMENTSOF(routes); i++)
		if (route_match(routes[i].pattern, url, key, key_too_long))
			return &routes[i];
	return NULL;
}

static bool method_allowed(const struct route *route, const char *method)
{
	if (strcmp(route->method, method) == 0)
		return true;
	return strcmp(route->method, "GET") == 0 && strcmp(method, "HEAD") == 0;
}

/* Resolves the key named in the path for an authenticated caller.  Callers
 * not allowed every key learn nothing about keys they may not use: 403. */
static int resolve_key(struct http_server *srv, struct request *req, bool key_too_long)
{
	bool may = !key_too_long && config_name_valid(req->key) &&
		   auth_may_use_key(req->client, req->key);

	if (!may)
		return req->client->all_keys ? PS_E_NOT_FOUND : PS_E_FORBIDDEN;
	return signer_find_key(srv->signer, req->key, &req->key_index);
}

static bool media_type_is(const char *value, const char *type)
{
	size_t n = strlen(type);

	if (!value || strncasecmp(value, type, n) != 0)
		return false;
	value += n;
	while (*value == ' ' || *value == '\t')
		value++;
	return *value == '\0' || *value == ';';
}

/* Checks the body's headers before any of it is read. */
static int check_body_headers(struct MHD_Connection *conn)
{
	const char *type = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
						       MHD_HTTP_HEADER_CONTENT_TYPE);
	const char *length = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
							 MHD_HTTP_HEADER_CONTENT_LENGTH);
	unsigned long long n = 0;

	if (length && parse_uint(length, 0, HTTP_BODY_MAX, &n) < 0)
		return PS_E_TOO_LARGE; /* MHD has already refused malformed lengths */
	if (!media_type_is(type, MEDIA_JSON))
		return PS_E_MEDIA_TYPE;
	return 0;
}

/* Everything decided from the request line and headers alone. */
static int request_begin(struct http_server *srv, struct request *req,
			 struct MHD_Connection *conn, const char *url, const char *method)
{
	bool key_too_long = false;
	int r;

	req->route = route_find(url, req->key, &key_too_long);
	if (!req->route)
		return PS_E_NOT_FOUND;
	if (!method_allowed(req->route, method))
		return PS_E_METHOD;
	if (req->route->auth) {
		r = auth_authenticate(srv->cfg,
				      MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
								  MHD_HTTP_HEADER_AUTHORIZATION),
				      &req->client);
		if (r < 0)
			return r;
	}
	if (strstr(req->route->pattern, "{key}")) {
		r = resolve_key(srv, req, key_too_long);
		if (r < 0)
			return r;
	}
	return req->route->has_body ? check_body_headers(conn) : 0;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
				  const char *method, const char *version, const char *upload,
				  size_t *upload_size, void **con_cls)
{
	struct http_server *srv = cls;
	struct request *req = *con_cls;
	int r;

	if (!req) {
		req = calloc(1, sizeof(*req));
		if (!req)
			return MHD_NO;
		*con_cls = req;
		r = request_begin(srv, req, conn, url, method);
		if (r < 0)
			return respond_error(conn, req, r, NULL);
		return req->route->has_body ? MHD_YES : req->route->handler(srv, req, conn);
	}
	if (*upload_size > 0) {
		/* Chunked bodies have no length up front: count while they stream. */
		if (req->too_large || *upload_size > HTTP_BODY_MAX - req->body_len)
			req->too_large = true;
		else
			memcpy(req->body + req->body_len, upload, *upload_size);
		if (!req->too_large)
			req->body_len += *upload_size;
		*upload_size = 0;
		return MHD_YES;
	}
	if (req->too_large)
		return respond_error(conn, req, PS_E_TOO_LARGE, NULL);
	return req->route->handler(srv, req, conn);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
			 enum MHD_RequestTerminationCode toe)
{
	free(*con_cls);
	*con_cls = NULL;
}

/* ---- handlers ----------------------------------------------------------- */

static json_t *key_json(const char *name, const struct ca_cert *ca)
{
	char nb[RFC3339_LEN], na[RFC3339_LEN];

	time_format_rfc3339(ca->not_before, nb);
	time_format_rfc3339(ca->not_after, na);
	return json_pack("{s:s,s:s,s:s,s:s,s:s,s:s,s:s}", "name", name, "algorithm", ca->algorithm,
			 "subject", ca->subject, "sha1_thumbprint", ca->sha1_thumbprint,
			 "sha256_fingerprint", ca->sha256_fingerprint, "not_before", nb,
			 "not_after", na);
}

static enum MHD_Result handle_healthz(struct http_server *srv, struct request *req,
				      struct MHD_Connection *conn)
{
	return respond_json(conn, MHD_HTTP_OK, json_pack("{s:s}", "status", "ok"));
}

static enum MHD_Result handle_keys(struct http_server *srv, struct request *req,
				   struct MHD_Connection *conn)
{
	json_t *list = json_array();

	for (size_t i = 0; list && i < signer_key_count(srv->signer); i++) {
		const char *name = signer_key_name(srv->signer, i);

		if (auth_may_use_key(req->client, name) &&
		    json_array_append_new(list, key_json(name, signer_key_ca(srv->signer, i))) < 0) {
			json_decref(list);
			list = NULL;
		}
	}
	if (!list)
		return respond_error(conn, req, PS_E_NOMEM, NULL);
	return respond_json(conn, MHD_HTTP_OK, json_pack("{s:o}", "keys", list));
}

static enum MHD_Result handle_key(struct http_server *srv, struct request *req,
				  struct MHD_Connection *conn)
{
	return respond_json(conn, MHD_HTTP_OK,
			    key_json(req->key, signer_key_ca(srv->signer, req->key_index)));
}

static enum MHD_Result handle_key_certificate(struct http_server *srv, struct request *req,
					      struct MHD_Connection *conn)
{
	return respond_text(conn, MHD_HTTP_OK, MEDIA_PEM,
			    signer_key_ca(srv->signer, req->key_index)->pem);
}

static bool wants_pem(struct MHD_Connection *conn)
{
	const char *accept = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
							 MHD_HTTP_HEADER_ACCEPT);

	return accept && strcasestr(accept, MEDIA_PEM) && !strcasestr(accept, MEDIA_JSON);
}

static enum MHD_Result respond_issued(struct MHD_Connection *conn, const struct request *req,
				      const char *code, const struct issued *cert)
{
	char nb[RFC3339_LEN], na[RFC3339_LEN];

	if (wants_pem(conn))
		return respond_text(conn, MHD_HTTP_CREATED, MEDIA_PEM, cert->pem);
	time_format_rfc3339(cert->not_before, nb);
	time_format_rfc3339(cert->not_after, na);
	return respond_json(conn, MHD_HTTP_CREATED,
			    json_pack("{s:s,s:s,s:s,s:s,s:s,s:s,s:s}", "key", req->key,
				      "verification_code", code, "certificate", cert->pem,
				      "serial", cert->serial_hex, "not_before", nb, "not_after", na,
				      "sha256_fingerprint", cert->sha256_fingerprint));
}

static enum MHD_Result handle_sign(struct http_server *srv, struct request *req,
				   struct MHD_Connection *conn)
{
	char why[REQUEST_WHY_MAX];
	struct sign_request sr = {0};
	struct issued *cert = NULL;
	enum MHD_Result ret;
	int r;

	r = request_parse_sign(req->body, req->body_len, &sr, why);
	if (r < 0)
		return respond_error(conn, req, r, why[0] ? why : NULL);
	r = signer_issue(srv->signer, req->key_index, sr.code, &cert);
	if (r < 0) {
		log_warning("client '%s' key '%s' code %s: not issued: %s", req->client->name,
			    req->key, sr.code, ps_strerror(r));
		request_sign_free(&sr);
		return respond_error(conn, req, r, NULL);
	}
	log_info("issued: client '%s' key '%s' code %s serial %s sha256 %s%s%s",
		 req->client->name, req->key, sr.code, cert->serial_hex, cert->sha256_fingerprint,
		 sr.context ? " context " : "", sr.context ? sr.context : "");
	ret = respond_issued(conn, req, sr.code, cert);
	issued_free(cert);
	request_sign_free(&sr);
	return ret;
}

/* ---- listeners ---------------------------------------------------------- */

static void log_bound(int fd)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	char host[INET6_ADDRSTRLEN] = "?";
	unsigned port = 0;

	if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0)
		return;
	if (ss.ss_family == AF_INET) {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)&ss;

		inet_ntop(AF_INET, &sin->sin_addr, host, sizeof(host));
		port = ntohs(sin->sin_port);
		log_info("listening on %s:%u", host, port);
	} else if (ss.ss_family == AF_INET6) {
		const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)&ss;

		inet_ntop(AF_INET6, &sin6->sin6_addr, host, sizeof(host));
		port = ntohs(sin6->sin6_port);
		log_info("listening on [%s]:%u", host, port);
	}
}

static int listen_on(const struct config_listen *l, int *ret_fd)
{
	int one = 1;
	int fd = socket(l->addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);

	if (fd < 0)
		return PS_E_IO;
	(void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (l->addr.ss_family == AF_INET6)
		(void)setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
	if (bind(fd, (const struct sockaddr *)&l->addr, l->addr_len) < 0 || listen(fd, 128) < 0) {
		log_error("cannot listen on %s: %s", l->text, strerror(errno));
		close(fd);
		return PS_E_IO;
	}
	*ret_fd = fd;
	return 0;
}

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
	char line[512];

	vsnprintf(line, sizeof(line), fmt, ap);
	line[strcspn(line, "\n")] = '\0';
	log_debug("http: %s", line);
}

static int start_daemon(struct http_server *srv, int fd, struct MHD_Daemon **ret)
{
	unsigned threads = srv->cfg->workers ? srv->cfg->workers : 1;
	struct MHD_Daemon *d = MHD_start_daemon(
		MHD_USE_AUTO_INTERNAL_THREAD | MHD_USE_ERROR_LOG | MHD_USE_ITC, 0, NULL, NULL,
		on_request, srv,
		MHD_OPTION_LISTEN_SOCKET, (MHD_socket)fd,
		MHD_OPTION_THREAD_POOL_SIZE, threads,
		MHD_OPTION_CONNECTION_LIMIT, (unsigned)HTTP_CONNECTION_LIMIT,
		MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)HTTP_CONNECTION_TIMEOUT,
		MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)HTTP_MEMORY_LIMIT,
		MHD_OPTION_NOTIFY_COMPLETED, on_completed, srv,
		MHD_OPTION_EXTERNAL_LOGGER, mhd_log, srv,
		MHD_OPTION_STRICT_FOR_CLIENT, 1,
		MHD_OPTION_END);

	if (!d) {
		log_error("cannot start the HTTP server");
		return PS_E_IO;
	}
	*ret = d;
	return 0;
}

int http_start(const struct config *cfg, struct signer *signer, struct http_server **ret)
{
	struct http_server *srv = calloc(1, sizeof(*srv));
	int r = srv ? 0 : PS_E_NOMEM;

	if (srv) {
		srv->cfg = cfg;
		srv->signer = signer;
	}
	for (size_t i = 0; r == 0 && i < cfg->n_listen; i++) {
		int fd = -1;

		r = listen_on(&cfg->listen[i], &fd);
		if (r == 0)
			r = start_daemon(srv, fd, &srv->daemons[srv->n_daemons]);
		if (r == 0) {
			srv->n_daemons++;
			log_bound(fd);
		} else if (fd >= 0) {
			close(fd);
		}
	}
	if (r < 0) {
		http_stop(srv);
		return r;
	}
	*ret = srv;
	return 0;
}

void http_stop(struct http_server *srv)
{
	if (!srv)
		return;
	for (size_t i = 0; i < srv->n_daemons; i++) {
		MHD_socket fd = MHD_quiesce_daemon(srv->daemons[i]);

		MHD_stop_daemon(srv->daemons[i]);
		if (fd != MHD_INVALID_SOCKET)
			close(fd);
	}
	free(srv);
}
