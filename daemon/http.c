#include "http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <microhttpd.h>

#include "auth.h"
#include "error.h"
#include "log.h"
#include "metrics.h"
#include "ratelimit.h"
#include "request.h"
#include "text.h"
#include "util.h"

#define MEDIA_JSON "application/json"
#define MEDIA_PEM "application/x-pem-file"
#define PEER_MAX 64
/* A chunked body has no length up front: past HTTP_BODY_MAX it is read and
 * dropped up to this many bytes (to answer 413), then the connection is cut. */
#define HTTP_DISCARD_MAX (64 * 1024)

/* What a request is served with: swapped whole on reload, freed when the
 * last request holding it is done. */
struct runtime {
	atomic_uint refs;
	struct config *cfg;
	struct signer *signer;
	struct limits *limits;
};

struct listener {
	struct http_server *srv;
	struct MHD_Daemon *daemon;
	bool is_unix;
	bool bound_here;                 /* a Unix socket file popsignd made: removed at stop */
	char text[160];
};

struct http_server {
	pthread_mutex_t lock;            /* guards rt */
	struct runtime *rt;
	struct audit *audit;
	struct metrics *metrics;
	atomic_ullong next_request_id;
	struct listener listeners[CONFIG_LISTEN_MAX];
	size_t n_listeners;
};

struct request;
typedef enum MHD_Result (*handler_fn)(struct request *req, struct MHD_Connection *conn);

struct route {
	const char *name;       /* the route label in metrics */
	const char *pattern;    /* path segments; "{key}" matches a key name */
	const char *method;     /* the one method served (GET also answers HEAD) */
	bool auth;
	bool sign;              /* the signing route: limited and audited */
	handler_fn handler;
};

struct request {
	struct http_server *srv;
	struct runtime *rt;
	const struct route *route;
	const struct config_client *client;
	uint64_t id;
	char peer[PEER_MAX];             /* "127.0.0.1:50312" or "uid=1000" */
	char peer_key[PEER_MAX];         /* the same without the port: for back-off */
	struct auth_peer auth_peer;
	char key[CONFIG_NAME_MAX + 1];
	size_t key_index;
	unsigned retry_after;            /* seconds, for 429 and 503 */
	int early_error;                 /* decided from the headers, answered at the end */
	struct sign_request sign;        /* parsed body of the signing route */
	bool audit_announced;            /* its record is announced and not yet written */
	bool too_large;
	size_t discarded;                /* body bytes dropped past HTTP_BODY_MAX */
	size_t body_len;
	char body[HTTP_BODY_MAX + 1];
};

static enum MHD_Result handle_healthz(struct request *, struct MHD_Connection *);
static enum MHD_Result handle_keys(struct request *, struct MHD_Connection *);
static enum MHD_Result handle_key(struct request *, struct MHD_Connection *);
static enum MHD_Result handle_key_certificate(struct request *, struct MHD_Connection *);
static enum MHD_Result handle_sign(struct request *, struct MHD_Connection *);
static enum MHD_Result handle_readyz(struct request *, struct MHD_Connection *);
static enum MHD_Result handle_metrics(struct request *, struct MHD_Connection *);

static const struct route routes[] = {
	{"healthz", "/healthz", "GET", false, false, handle_healthz},
	{"readyz", "/readyz", "GET", false, false, handle_readyz},
	{"metrics", "/metrics", "GET", false, false, handle_metrics},
	{"keys", "/v1/keys", "GET", true, false, handle_keys},
	{"key", "/v1/keys/{key}", "GET", true, false, handle_key},
	{"key_certificate", "/v1/keys/{key}/certificate", "GET", true, false,
	 handle_key_certificate},
	{"sign", "/v1/keys/{key}/verification-certificates", "POST", true, true, handle_sign},
};

/* ---- runtime ------------------------------------------------------------ */

static struct runtime *runtime_new(struct config *cfg, struct signer *signer)
{
	struct runtime *rt = calloc(1, sizeof(*rt));

	if (!rt || limits_new(cfg->n_clients, &rt->limits) < 0) {
		free(rt);
		return NULL;
	}
	atomic_init(&rt->refs, 1);
	rt->cfg = cfg;
	rt->signer = signer;
	limits_set_auth_failures(rt->limits, cfg->auth_failures);
	for (size_t i = 0; i < cfg->n_clients; i++)
		limits_set_bucket(rt->limits, i, cfg->clients[i].rate, cfg->clients[i].burst);
	return rt;
}

static void runtime_unref(struct runtime *rt)
{
	if (!rt || atomic_fetch_sub(&rt->refs, 1) != 1)
		return;
	signer_free(rt->signer);
	config_free(rt->cfg);
	limits_free(rt->limits);
	free(rt);
}

static struct runtime *runtime_get(struct http_server *srv)
{
	struct runtime *rt;

	pthread_mutex_lock(&srv->lock);
	rt = srv->rt;
	atomic_fetch_add(&rt->refs, 1);
	pthread_mutex_unlock(&srv->lock);
	return rt;
}

/* ---- audit -------------------------------------------------------------- */

static bool is_sign_route(const struct request *req)
{
	return req->route && req->route->sign;
}

/* Records the outcome of a signing request.  Returns 0 or PS_E_AUDIT. */
static int audit_outcome(struct request *req, const char *error, const struct issued *c)
{
	struct audit_record rec = {
		.request_id = req->id,
		.client = req->client ? req->client->name : NULL,
		.peer = req->peer,
		.key = req->key[0] ? req->key : NULL,
		.code = req->sign.code,
		.context = req->sign.context,
		.outcome = c ? "issued" : "denied",
		.error = error,
		.serial = c ? c->serial_hex : NULL,
		.sha256_fingerprint = c ? c->sha256_fingerprint : NULL,
		.not_after = c ? c->not_after : 0,
		.announced = req->audit_announced,
	};

	if (!req->srv->audit)
		return 0;
	req->audit_announced = false;
	clock_gettime(CLOCK_REALTIME, &rec.time);
	return audit_write(req->srv->audit, &rec);
}

/* ---- responses ---------------------------------------------------------- */

static void add_common_headers(struct MHD_Response *resp, const struct request *req,
			       const char *content_type)
{
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
	MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
	if (req) {
		char id[24];

		snprintf(id, sizeof(id), "%llu", (unsigned long long)req->id);
		MHD_add_response_header(resp, "X-Request-Id", id);
	}
}

static void count_response(const struct request *req, unsigned status)
{
	char code[8];

	if (!req)
		return;
	snprintf(code, sizeof(code), "%u", status);
	metric_add(metrics_counter(req->srv->metrics, "popsign_http_requests_total",
				   "HTTP requests answered, by route and status", "route",
				   req->route ? req->route->name : "none", "status", code, NULL),
		   1);
}

static enum MHD_Result queue(struct MHD_Connection *conn, const struct request *req,
			     unsigned status, struct MHD_Response *resp)
{
	enum MHD_Result ret;

	count_response(req, status);
	if (!resp)
		return MHD_NO;
	ret = MHD_queue_response(conn, status, resp);
	MHD_destroy_response(resp);
	return ret;
}

static enum MHD_Result respond_text(struct MHD_Connection *conn, const struct request *req,
				    unsigned status, const char *content_type, const char *text)
{
	struct MHD_Response *resp = MHD_create_response_from_buffer(
		strlen(text), (void *)(uintptr_t)text, MHD_RESPMEM_MUST_COPY);

	if (resp)
		add_common_headers(resp, req, content_type);
	return queue(conn, req, status, resp);
}

/* Sends body (stolen) as JSON, with a final newline. */
static enum MHD_Result respond_json(struct MHD_Connection *conn, const struct request *req,
				    unsigned status, json_t *body)
{
	char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
	struct MHD_Response *resp;
	size_t len;

	json_decref(body);
	if (!text)
		return MHD_NO;
	len = strlen(text);
	text[len] = '\n'; /* json_dumps() leaves room: the NUL is not sent */
	resp = MHD_create_response_from_buffer(len + 1, text, MHD_RESPMEM_MUST_FREE);
	if (!resp) {
		free(text);
		return MHD_NO;
	}
	add_common_headers(resp, req, MEDIA_JSON);
	return queue(conn, req, status, resp);
}

static void add_error_headers(struct MHD_Response *resp, const struct request *req,
			      unsigned status)
{
	if (status == MHD_HTTP_UNAUTHORIZED)
		MHD_add_response_header(resp, MHD_HTTP_HEADER_WWW_AUTHENTICATE,
					"Bearer realm=\"popsignd\"");
	if (status == MHD_HTTP_METHOD_NOT_ALLOWED && req->route)
		MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW,
					strcmp(req->route->method, "GET") == 0 ? "GET, HEAD"
									       : req->route->method);
	if (status == MHD_HTTP_TOO_MANY_REQUESTS || status == MHD_HTTP_SERVICE_UNAVAILABLE) {
		char seconds[16];

		snprintf(seconds, sizeof(seconds), "%u", req->retry_after ? req->retry_after : 1);
		MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, seconds);
	}
}

/* The fixed error body for err; detail (optional) replaces the table's
 * sentence with something more specific.  Denials on the signing route are
 * audited. */
static enum MHD_Result respond_error(struct MHD_Connection *conn, struct request *req, int err,
				     const char *detail)
{
	unsigned status = (unsigned)ps_error_http_status(err);
	json_t *body = json_pack("{s:{s:s,s:s}}", "error", "code", ps_error_code(err), "message",
				 detail ? detail : ps_strerror(err));
	char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
	struct MHD_Response *resp;

	json_decref(body);
	if (is_sign_route(req) && audit_outcome(req, ps_error_code(err), NULL) < 0)
		log_error("request %llu: the denial could not be audited",
			  (unsigned long long)req->id);
	if (!text)
		return MHD_NO;
	resp = MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
	if (!resp) {
		free(text);
		return MHD_NO;
	}
	add_common_headers(resp, req, MEDIA_JSON);
	add_error_headers(resp, req, status);
	return queue(conn, req, status, resp);
}

/* ---- routing ------------------------------------------------------------ */

/* Matches url against pattern; "{key}" takes one segment that could be a
 * key name (config_name_valid()) into key: nothing else can name a key. */
static bool route_match(const char *pattern, const char *url, char key[CONFIG_NAME_MAX + 1])
{
	while (*pattern && *url) {
		if (strncmp(pattern, "{key}", 5) == 0) {
			size_t n = strcspn(url, "/");

			if (n == 0 || n > CONFIG_NAME_MAX)
				return false;
			memcpy(key, url, n);
			key[n] = '\0';
			if (!config_name_valid(key))
				return false;
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

static const struct route *route_find(const char *url, char key[CONFIG_NAME_MAX + 1])
{
	for (size_t i = 0; i < ELEMENTSOF(routes); i++)
		if (route_match(routes[i].pattern, url, key))
			return &routes[i];
	key[0] = '\0';
	return NULL;
}

static bool method_allowed(const struct route *route, const char *method)
{
	if (strcmp(route->method, method) == 0)
		return true;
	return strcmp(route->method, "GET") == 0 && strcmp(method, "HEAD") == 0;
}

/* Callers not allowed every key learn nothing about keys they may not use:
 * 403, whether the key exists or not. */
static int resolve_key(struct request *req)
{
	if (!auth_may_use_key(req->client, req->key))
		return req->client->all_keys ? PS_E_NOT_FOUND : PS_E_FORBIDDEN;
	return signer_find_key(req->rt->signer, req->key, &req->key_index);
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

static enum MHD_Result count_content_length(void *cls, enum MHD_ValueKind kind,
					   const char *key, const char *value)
{
	if (strcasecmp(key, MHD_HTTP_HEADER_CONTENT_LENGTH) == 0)
		(*(unsigned *)cls)++;
	return MHD_YES;
}

/* Checks the body's headers before any of it is read. */
static int check_body_headers(struct MHD_Connection *conn)
{
	const char *type = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
						       MHD_HTTP_HEADER_CONTENT_TYPE);
	const char *length = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
							 MHD_HTTP_HEADER_CONTENT_LENGTH);
	const char *coding = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
							 MHD_HTTP_HEADER_TRANSFER_ENCODING);
	unsigned long long n = 0;
	unsigned lengths = 0;

	/* Framing a proxy could read otherwise (RFC 9112 6.3): refused. */
	(void)MHD_get_connection_values(conn, MHD_HEADER_KIND, count_content_length, &lengths);
	if (lengths > 1 || (coding && strcasecmp(coding, "chunked") != 0))
		return PS_E_INVALID_REQUEST;
	if (length && parse_uint(length, 0, HTTP_BODY_MAX, &n) < 0)
		return PS_E_TOO_LARGE; /* MHD has already refused malformed lengths */
	if (!media_type_is(type, MEDIA_JSON))
		return PS_E_MEDIA_TYPE;
	return 0;
}

/* Who the caller is, with failed attempts slowed down per peer. */
static int authenticate(struct request *req, struct MHD_Connection *conn)
{
	const char *authorization = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
								MHD_HTTP_HEADER_AUTHORIZATION);
	int r = limits_auth_check(req->rt->limits, req->peer_key, &req->retry_after);

	if (r < 0) {
		metric_add(metrics_counter(req->srv->metrics, "popsign_rate_limited_total",
					   "Requests refused with 429, by reason", "reason",
					   "auth_failures", NULL),
			   1);
		return r;
	}
	r = auth_authenticate(req->rt->cfg, authorization, &req->auth_peer, &req->client);
	if (r == PS_E_UNAUTHORIZED) {
		metric_add(metrics_counter(req->srv->metrics, "popsign_auth_failures_total",
					   "Failed authentications", NULL),
			   1);
		limits_auth_failed(req->rt->limits, req->peer_key);
		log_warning("request %llu from %s: authentication failed",
			    (unsigned long long)req->id, req->peer);
	}
	return r;
}

/* Everything decided from the request line and headers alone. */
static int request_begin(struct request *req, struct MHD_Connection *conn, const char *url,
			 const char *method)
{
	int r;

	req->route = route_find(url, req->key);
	if (!req->route)
		return PS_E_NOT_FOUND;
	if (!method_allowed(req->route, method))
		return PS_E_METHOD;
	if (!req->route->auth)
		return 0;
	r = authenticate(req, conn);
	if (r == 0 && strstr(req->route->pattern, "{key}"))
		r = resolve_key(req);
	if (r == 0 && req->route->sign) {
		r = limits_take(req->rt->limits, (size_t)(req->client - req->rt->cfg->clients),
				&req->retry_after);
		if (r < 0)
			metric_add(metrics_counter(req->srv->metrics, "popsign_rate_limited_total",
						   "Requests refused with 429, by reason", "reason",
						   "client_rate", NULL),
				   1);
	}
	if (r == 0 && req->route->sign)
		r = check_body_headers(conn);
	return r;
}

/* ---- peers -------------------------------------------------------------- */

static void peer_describe(struct request *req, const struct listener *l,
			  struct MHD_Connection *conn)
{
	const union MHD_ConnectionInfo *info;
	char host[INET6_ADDRSTRLEN] = "?";
	unsigned port = 0;

	if (l->is_unix) {
		struct ucred cred = {0, (uid_t)-1, (gid_t)-1};
		socklen_t len = sizeof(cred);

		info = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
		if (info && getsockopt(info->connect_fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0)
			req->auth_peer = (struct auth_peer){true, cred.uid, cred.gid};
		snprintf(req->peer, sizeof(req->peer), "uid=%u", (unsigned)cred.uid);
		snprintf(req->peer_key, sizeof(req->peer_key), "%s", req->peer);
		return;
	}
	info = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
	if (info && info->client_addr->sa_family == AF_INET) {
		const struct sockaddr_in *sin = (const void *)info->client_addr;

		inet_ntop(AF_INET, &sin->sin_addr, host, sizeof(host));
		port = ntohs(sin->sin_port);
	} else if (info && info->client_addr->sa_family == AF_INET6) {
		const struct sockaddr_in6 *sin6 = (const void *)info->client_addr;

		inet_ntop(AF_INET6, &sin6->sin6_addr, host, sizeof(host));
		port = ntohs(sin6->sin6_port);
	}
	snprintf(req->peer, sizeof(req->peer), "%s:%u", host, port);
	snprintf(req->peer_key, sizeof(req->peer_key), "%s", host);
}

static struct request *request_new(struct listener *l, struct MHD_Connection *conn)
{
	struct request *req = calloc(1, sizeof(*req));

	if (!req)
		return NULL;
	req->srv = l->srv;
	req->rt = runtime_get(l->srv);
	req->id = atomic_fetch_add(&l->srv->next_request_id, 1) + 1;
	peer_describe(req, l, conn);
	return req;
}

/* ---- the libmicrohttpd callbacks ----------------------------------------- */

/* Keeps up to HTTP_BODY_MAX bytes; drops more up to HTTP_DISCARD_MAX, then
 * hangs up: libmicrohttpd cannot answer in the middle of an upload. */
static enum MHD_Result take_body(struct request *req, const char *data, size_t *size)
{
	if (!req->route || !req->route->sign || req->early_error < 0)
		req->too_large = true; /* no body belongs here: dropped */
	if (!req->too_large && *size <= HTTP_BODY_MAX - req->body_len) {
		memcpy(req->body + req->body_len, data, *size);
		req->body_len += *size;
	} else {
		req->too_large = true;
		req->discarded += *size;
	}
	*size = 0;
	return req->discarded > HTTP_DISCARD_MAX ? MHD_NO : MHD_YES;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
				  const char *method, const char *version, const char *upload,
				  size_t *upload_size, void **con_cls)
{
	struct request *req = *con_cls;

	if (!req) {
		int r;

		req = request_new(cls, conn);
		if (!req)
			return MHD_NO;
		*con_cls = req;
		r = request_begin(req, conn, url, method);
		/* A refused body is not read; anything else is answered on the
		 * last call, which keeps the connection open for the next request. */
		if (r < 0 && req->route && req->route->sign)
			return respond_error(conn, req, r, NULL);
		req->early_error = r;
		return MHD_YES;
	}
	if (*upload_size > 0)
		return take_body(req, upload, upload_size);
	if (req->early_error < 0)
		return respond_error(conn, req, req->early_error, NULL);
	if (req->too_large)
		return respond_error(conn, req, PS_E_TOO_LARGE, NULL);
	return req->route->handler(req, conn);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
			 enum MHD_RequestTerminationCode toe)
{
	struct request *req = *con_cls;

	if (!req)
		return;
	request_sign_free(&req->sign);
	runtime_unref(req->rt);
	free(req);
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

static enum MHD_Result handle_healthz(struct request *req, struct MHD_Connection *conn)
{
	return respond_json(conn, req, MHD_HTTP_OK, json_pack("{s:s}", "status", "ok"));
}

static enum MHD_Result handle_keys(struct request *req, struct MHD_Connection *conn)
{
	const struct signer *s = req->rt->signer;
	json_t *list = json_array();

	for (size_t i = 0; list && i < signer_key_count(s); i++) {
		const char *name = signer_key_name(s, i);

		if (auth_may_use_key(req->client, name) &&
		    json_array_append_new(list, key_json(name, signer_key_ca(s, i))) < 0) {
			json_decref(list);
			list = NULL;
		}
	}
	if (!list)
		return respond_error(conn, req, PS_E_NOMEM, NULL);
	return respond_json(conn, req, MHD_HTTP_OK, json_pack("{s:o}", "keys", list));
}

static enum MHD_Result handle_key(struct request *req, struct MHD_Connection *conn)
{
	return respond_json(conn, req, MHD_HTTP_OK,
			    key_json(req->key, signer_key_ca(req->rt->signer, req->key_index)));
}

static enum MHD_Result handle_key_certificate(struct request *req, struct MHD_Connection *conn)
{
	return respond_text(conn, req, MHD_HTTP_OK, MEDIA_PEM,
			    signer_key_ca(req->rt->signer, req->key_index)->pem);
}

static bool wants_pem(struct MHD_Connection *conn)
{
	const char *accept = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
							 MHD_HTTP_HEADER_ACCEPT);

	return accept && strcasestr(accept, MEDIA_PEM) && !strcasestr(accept, MEDIA_JSON);
}

/* The 201 answer, written directly rather than through jansson: it is on
 * every certificate's path, and every value is ASCII already checked
 * (key name, code, PEM, hex, times).  Returns the text with a final newline
 * (free it) and its length in *ret_len, or NULL. */
static char *issued_json(const struct request *req, const struct issued *cert, size_t *ret_len)
{
	char nb[RFC3339_LEN], na[RFC3339_LEN];
	const char *names[] = {"key", "verification_code", "certificate", "serial",
			       "not_before", "not_after", "sha256_fingerprint"};
	const char *values[] = {req->key, req->sign.code, cert->pem, cert->serial_hex,
				nb, na, cert->sha256_fingerprint};
	size_t cap = 3;
	char *text, *p;

	time_format_rfc3339(cert->not_before, nb);
	time_format_rfc3339(cert->not_after, na);
	for (size_t i = 0; i < ELEMENTSOF(names); i++)
		cap += JSON_STRING_ROOM(strlen(names[i])) + JSON_STRING_ROOM(strlen(values[i])) + 2;
	text = malloc(cap);
	if (!text)
		return NULL;
	p = text;
	*p++ = '{';
	for (size_t i = 0; i < ELEMENTSOF(names); i++) {
		if (i > 0)
			*p++ = ',';
		p = json_put_string(p, names[i]);
		if (p) {
			*p++ = ':';
			p = json_put_string(p, values[i]);
		}
		if (!p) {
			free(text);
			return NULL;
		}
	}
	*p++ = '}';
	*p++ = '\n';
	*ret_len = (size_t)(p - text);
	return text;
}

static enum MHD_Result respond_issued(struct MHD_Connection *conn, const struct request *req,
				      const struct issued *cert)
{
	struct MHD_Response *resp;
	size_t len = 0;
	char *text;

	if (wants_pem(conn))
		return respond_text(conn, req, MHD_HTTP_CREATED, MEDIA_PEM, cert->pem);
	text = issued_json(req, cert, &len);
	if (!text)
		return MHD_NO;
	resp = MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE);
	if (!resp) {
		free(text);
		return MHD_NO;
	}
	add_common_headers(resp, req, MEDIA_JSON);
	return queue(conn, req, MHD_HTTP_CREATED, resp);
}

static double seconds_since(const struct timespec *t0)
{
	struct timespec t1;

	clock_gettime(CLOCK_MONOTONIC, &t1);
	return (double)(t1.tv_sec - t0->tv_sec) + (double)(t1.tv_nsec - t0->tv_nsec) / 1e9;
}

/* signer_issue(), timed and counted per key. */
static int timed_issue(struct request *req, struct issued **ret)
{
	struct timespec t0;
	int r;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	r = signer_issue(req->rt->signer, req->key_index, req->sign.code, ret);
	metric_observe(metrics_histogram(req->srv->metrics, "popsign_signing_seconds",
					 "Time to have a verification certificate issued by the "
					 "signer, by key", "key", req->key, NULL),
		       seconds_since(&t0));
	if (r == 0)
		metric_add(metrics_counter(req->srv->metrics, "popsign_certificates_issued_total",
					   "Verification certificates issued, by key", "key",
					   req->key, NULL),
			   1);
	return r;
}

static enum MHD_Result handle_sign(struct request *req, struct MHD_Connection *conn)
{
	char why[REQUEST_WHY_MAX];
	struct issued *cert = NULL;
	enum MHD_Result ret;
	int r;

	r = request_parse_sign(req->body, req->body_len, &req->sign, why);
	if (r < 0)
		return respond_error(conn, req, r, why[0] ? why : NULL);
	if (req->srv->audit) {
		audit_announce(req->srv->audit);
		req->audit_announced = true;
	}
	r = timed_issue(req, &cert);
	if (r < 0) {
		log_warning("request %llu: client '%s' key '%s' code %s: not issued: %s",
			    (unsigned long long)req->id, req->client->name, req->key,
			    req->sign.code, ps_strerror(r));
		return respond_error(conn, req, r, NULL);
	}
	/* Fail closed: no certificate leaves without its durable record. */
	if (audit_outcome(req, NULL, cert) < 0) {
		log_error("request %llu: certificate %s not returned: the audit trail cannot be "
			  "written", (unsigned long long)req->id, cert->serial_hex);
		issued_free(cert);
		return respond_error(conn, req, PS_E_AUDIT, NULL);
	}
	log_info("request %llu: issued: client '%s' peer %s key '%s' code %s serial %s%s%s",
		 (unsigned long long)req->id, req->client->name, req->peer, req->key,
		 req->sign.code, cert->serial_hex, req->sign.context ? " context " : "",
		 req->sign.context ? req->sign.context : "");
	ret = respond_issued(conn, req, cert);
	issued_free(cert);
	return ret;
}

/* 200 when every key can sign, else 503; each key's state comes from the
 * signer's background probes, never from a probe made for this request. */
static enum MHD_Result handle_readyz(struct request *req, struct MHD_Connection *conn)
{
	struct signer *s = req->rt->signer;
	json_t *keys = json_object();
	bool ready = true;

	for (size_t i = 0; keys && i < signer_key_count(s); i++) {
		const char *state = "unknown";

		if (signer_key_ready(s, i, &state) < 0)
			ready = false;
		if (json_object_set_new(keys, signer_key_name(s, i), json_string(state)) < 0) {
			json_decref(keys);
			keys = NULL;
		}
	}
	if (!keys)
		return respond_error(conn, req, PS_E_NOMEM, NULL);
	if (!ready)
		req->retry_after = 1;
	return respond_json(conn, req, ready ? MHD_HTTP_OK : MHD_HTTP_SERVICE_UNAVAILABLE,
			    json_pack("{s:s,s:o}", "status", ready ? "ready" : "unavailable",
				      "keys", keys));
}

static void count_token_error(void *ctx, const char *ckr_name, unsigned long long count)
{
	metric_raise(metrics_counter(ctx, "popsign_token_errors_total",
				     "Failed PKCS#11 calls in the signer, by CKR_ code", "ckr",
				     ckr_name, NULL),
		     count);
}

/* The signer's view, copied into the registry when it is scraped. */
static void update_signer_metrics(struct metrics *m, struct signer *s)
{
	metric_set(metrics_gauge(m, "popsign_signer_up",
				 "Whether the signer process is up and answering", NULL),
		   signer_alive(s) ? 1 : 0);
	metric_set(metrics_gauge(m, "popsign_token_sessions_in_use",
				 "Token sessions signing right now", NULL),
		   signer_sessions_in_use(s));
	for (size_t i = 0; i < signer_key_count(s); i++) {
		const char *state = NULL;

		metric_set(metrics_gauge(m, "popsign_key_ready", "Whether a key can sign (1) or "
					 "not (0)", "key", signer_key_name(s, i), NULL),
			   signer_key_ready(s, i, &state) == 0 ? 1 : 0);
	}
	signer_token_errors(s, count_token_error, m);
}

static enum MHD_Result handle_metrics(struct request *req, struct MHD_Connection *conn)
{
	char *text = NULL;
	size_t len = 0;
	struct MHD_Response *resp;

	update_signer_metrics(req->srv->metrics, req->rt->signer);
	if (metrics_render(req->srv->metrics, &text, &len) < 0)
		return respond_error(conn, req, PS_E_NOMEM, NULL);
	resp = MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE);
	if (!resp) {
		free(text);
		return MHD_NO;
	}
	add_common_headers(resp, req, "text/plain; version=0.0.4; charset=utf-8");
	return queue(conn, req, MHD_HTTP_OK, resp);
}

/* ---- listeners ---------------------------------------------------------- */

static void listener_describe(int fd, struct listener *l)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	char host[INET6_ADDRSTRLEN] = "?";

	memset(&ss, 0, sizeof(ss));
	if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0)
		return;
	l->is_unix = ss.ss_family == AF_UNIX;
	if (ss.ss_family == AF_INET) {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)&ss;

		inet_ntop(AF_INET, &sin->sin_addr, host, sizeof(host));
		snprintf(l->text, sizeof(l->text), "%s:%u", host, ntohs(sin->sin_port));
	} else if (ss.ss_family == AF_INET6) {
		const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)&ss;

		inet_ntop(AF_INET6, &sin6->sin6_addr, host, sizeof(host));
		snprintf(l->text, sizeof(l->text), "[%s]:%u", host, ntohs(sin6->sin6_port));
	} else if (ss.ss_family == AF_UNIX) {
		snprintf(l->text, sizeof(l->text), "unix:%s",
			 ((const struct sockaddr_un *)&ss)->sun_path);
	}
}

/* A stale socket file from an earlier run is removed; anything else at the
 * path is left alone and bind() fails on it. */
static void unlink_stale_socket(const char *path)
{
	struct stat st;

	if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode))
		(void)unlink(path);
}

static int unix_socket_perms(const struct config *cfg, const char *path)
{
	if (chmod(path, cfg->socket_mode) < 0)
		return PS_E_IO;
	if (cfg->has_socket_group && chown(path, (uid_t)-1, cfg->socket_group) < 0)
		return PS_E_IO;
	return 0;
}

static int listen_on(const struct config *cfg, const struct config_listen *l, int *ret_fd)
{
	const char *path = ((const struct sockaddr_un *)&l->addr)->sun_path;
	int one = 1, r = 0;
	int fd = socket(l->addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);

	if (fd < 0)
		return PS_E_IO;
	if (l->is_unix)
		unlink_stale_socket(path);
	else
		(void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (l->addr.ss_family == AF_INET6)
		(void)setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
	if (bind(fd, (const struct sockaddr *)&l->addr, l->addr_len) < 0 || listen(fd, 128) < 0)
		r = PS_E_IO;
	if (r == 0 && l->is_unix)
		r = unix_socket_perms(cfg, path);
	if (r < 0) {
		log_error("cannot listen on %s: %s", l->text, strerror(errno));
		close(fd);
		return r;
	}
	*ret_fd = fd;
	return 0;
}

static int hex_digit(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	c = (char)(c | 0x20);
	return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* Decodes %XX in the path, except %2F and %00, which stay as written: an
 * escaped '/' must not split a segment, nor an escaped NUL end the path. */
static size_t unescape_path(void *cls, struct MHD_Connection *conn, char *s)
{
	char *in = s, *out = s;

	while (*in) {
		int hi = in[0] == '%' ? hex_digit(in[1]) : -1;
		int lo = hi >= 0 ? hex_digit(in[2]) : -1;
		char c = (char)(lo >= 0 ? hi << 4 | lo : 0); /* -1 << 4 is undefined */

		if (lo >= 0 && c != '/' && c != '\0') {
			*out++ = c;
			in += 3;
		} else {
			*out++ = *in++;
		}
	}
	*out = '\0';
	return (size_t)(out - s);
}

__attribute__((format(printf, 2, 0)))
static void mhd_log(void *cls, const char *fmt, va_list ap)
{
	char line[512];

	vsnprintf(line, sizeof(line), fmt, ap);
	line[strcspn(line, "\n")] = '\0';
	log_debug("http: %s", line);
}

/* A thread per connection: a request waiting for the signer or the audit
 * trail holds up only its own connection.  With a thread pool, one thread
 * often accepted two connections at once and then served them one after the
 * other, each waiting behind the other's signature (measured: 15-20 % fewer
 * certificates per second at 4 and 16 connections, and twice the timeout for
 * the second of two requests sent together to a hung token).  Threads are
 * bounded by max_connections. */
static int start_daemon(const struct config *cfg, struct listener *l, int fd)
{
	l->daemon = MHD_start_daemon(
		MHD_USE_AUTO_INTERNAL_THREAD | MHD_USE_THREAD_PER_CONNECTION | MHD_USE_ERROR_LOG |
			MHD_USE_ITC,
		0, NULL, NULL, on_request, l,
		MHD_OPTION_LISTEN_SOCKET, (MHD_socket)fd,
		MHD_OPTION_CONNECTION_LIMIT, cfg->max_connections,
		MHD_OPTION_CONNECTION_TIMEOUT, cfg->connection_timeout,
		/* Bounds the request line and headers; the body has its own buffer. */
		MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)cfg->max_header_size + 4096,
		MHD_OPTION_NOTIFY_COMPLETED, on_completed, l,
		MHD_OPTION_EXTERNAL_LOGGER, mhd_log, l,
		MHD_OPTION_STRICT_FOR_CLIENT, 1,
		MHD_OPTION_UNESCAPE_CALLBACK, unescape_path, l,
		MHD_OPTION_END);
	if (!l->daemon) {
		log_error("cannot start the HTTP server on %s", l->text);
		return PS_E_IO;
	}
	return 0;
}

static int add_listener(struct http_server *srv, const struct config *cfg, int fd,
			bool bound_here)
{
	struct listener *l = &srv->listeners[srv->n_listeners];
	int r;

	l->srv = srv;
	l->bound_here = bound_here;
	listener_describe(fd, l);
	r = start_daemon(cfg, l, fd);
	if (r < 0)
		return r;
	srv->n_listeners++;
	log_info("listening on %s", l->text);
	return 0;
}

static int open_listeners(struct http_server *srv, const struct config *cfg, const int *fds,
			  size_t n_fds)
{
	int r = 0;

	if (n_fds > CONFIG_LISTEN_MAX)
		return PS_E_IO;
	for (size_t i = 0; r == 0 && i < n_fds; i++)
		r = add_listener(srv, cfg, fds[i], false);
	for (size_t i = 0; r == 0 && n_fds == 0 && i < cfg->n_listen; i++) {
		int fd = -1;

		r = listen_on(cfg, &cfg->listen[i], &fd);
		if (r == 0)
			r = add_listener(srv, cfg, fd, true);
		if (r < 0 && fd >= 0)
			close(fd);
	}
	return r;
}

int http_start(struct config *cfg, struct signer *signer, struct audit *audit,
	       const int *listen_fds, size_t n_fds, struct http_server **ret)
{
	struct http_server *srv = calloc(1, sizeof(*srv));
	int r = srv ? metrics_new(&srv->metrics) : PS_E_NOMEM;

	if (r == 0)
		srv->rt = runtime_new(cfg, signer);
	if (!srv || !srv->rt) {
		if (srv)
			metrics_free(srv->metrics);
		free(srv);
		signer_free(signer);
		config_free(cfg);
		return PS_E_NOMEM;
	}
	pthread_mutex_init(&srv->lock, NULL);
	srv->audit = audit;
	r = open_listeners(srv, cfg, listen_fds, n_fds);
	if (r < 0) {
		http_stop(srv);
		return r;
	}
	*ret = srv;
	return 0;
}

void http_reload(struct http_server *srv, struct config *cfg, struct signer *signer)
{
	struct runtime *rt = runtime_new(cfg, signer), *old;

	if (!rt) {
		log_error("reload: out of memory; keeping the old configuration");
		signer_free(signer);
		config_free(cfg);
		return;
	}
	pthread_mutex_lock(&srv->lock);
	old = srv->rt;
	srv->rt = rt;
	pthread_mutex_unlock(&srv->lock);
	runtime_unref(old);
}

bool http_signer_alive(struct http_server *srv)
{
	struct runtime *rt = runtime_get(srv);
	bool alive = signer_alive(rt->signer);

	runtime_unref(rt);
	return alive;
}

void http_stop(struct http_server *srv)
{
	if (!srv)
		return;
	for (size_t i = 0; i < srv->n_listeners; i++) {
		MHD_socket fd = MHD_quiesce_daemon(srv->listeners[i].daemon);

		MHD_stop_daemon(srv->listeners[i].daemon);
		if (fd != MHD_INVALID_SOCKET)
			close(fd);
		if (srv->listeners[i].is_unix && srv->listeners[i].bound_here)
			(void)unlink(srv->listeners[i].text + strlen("unix:"));
	}
	runtime_unref(srv->rt);
	metrics_free(srv->metrics);
	pthread_mutex_destroy(&srv->lock);
	free(srv);
}
