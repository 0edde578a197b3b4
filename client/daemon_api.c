#include "daemon_api.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <sys/un.h>

#include <curl/curl.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "bearer.h"
#include "code.h"
#include "error.h"
#include "util.h"

#define PEM_TYPE "application/x-pem-file"
#define JSON_TYPE "application/json"

struct daemon_api {
	char *base;                 /* "http://HOST[:PORT]", or "unix:PATH" */
	const char *unix_socket;    /* the PATH of a "unix:PATH" base, or NULL */
	const struct secret *token; /* borrowed */
};

/* json_decrefp() is jansson's own (2.11 and later). */
#define _cleanup_json_ _cleanup_(json_decrefp)

void daemon_error_set(struct daemon_error *err, enum daemon_failure failure, const char *fmt, ...)
{
	va_list ap;

	if (!err)
		return;
	*err = (struct daemon_error){.failure = failure};
	va_start(ap, fmt);
	vsnprintf(err->message, sizeof(err->message), fmt, ap);
	va_end(ap);
}

bool daemon_key_name_valid(const char *name)
{
	size_t len = name ? strlen(name) : 0;

	if (len == 0 || len > DAEMON_KEY_NAME_MAX)
		return false;
	/* Spelled out rather than isalnum(): no locale may widen the set. */
	for (size_t i = 0; i < len; i++) {
		char c = name[i];

		if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
		      c == '.' || c == '_' || c == '-'))
			return false;
	}
	return true;
}

static int url_rebuild(CURLU *u, char **ret)
{
	char *host = NULL, *port = NULL, *base = NULL;
	int r = PS_E_NOMEM;

	if (curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK)
		goto out;
	(void)curl_url_get(u, CURLUPART_PORT, &port, 0);
	if (asprintf(&base, "http://%s%s%s", host, port ? ":" : "", port ? port : "") < 0)
		goto out;
	*ret = base;
	r = 0;
out:
	curl_free(host);
	curl_free(port);
	return r;
}

/* Why url, parsed into u, is not a popsignd URL; NULL if it is one. */
static const char *url_problem(CURLU *u, const char *url)
{
	if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK ||
	    !transport_url_has(u, CURLUPART_HOST))
		return "not a valid URL with a host";
	return transport_url_extra(u);
}

/* "unix:/PATH": an absolute path that fits in sockaddr_un. */
static int unix_url_check(const char *url, char **ret, const char **why)
{
	const char *path = url + strlen(DAEMON_API_UNIX_PREFIX);

	if (path[0] != '/' || strlen(path) >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
		*why = path[0] != '/' ? "a Unix socket URL is unix:/ABSOLUTE/PATH"
				      : "the Unix socket path is too long";
		return PS_E_INVALID_REQUEST;
	}
	*ret = strdup(url);
	return *ret ? 0 : PS_E_NOMEM;
}

int daemon_api_url_check(const char *url, char **ret, const char **why)
{
	_cleanup_(curl_url_cleanupp) CURLU *u = NULL;
	const char *problem;

	if (strlen(url) > DAEMON_API_URL_MAX)
		problem = "the URL is too long";
	else if (strncmp(url, DAEMON_API_UNIX_PREFIX, strlen(DAEMON_API_UNIX_PREFIX)) == 0)
		return unix_url_check(url, ret, why);
	else if (strncasecmp(url, "http://", 7) != 0)
		problem = "only http:// and unix:/PATH URLs are supported";
	else {
		u = curl_url();
		if (!u)
			return PS_E_NOMEM;
		problem = url_problem(u, url);
	}
	if (problem) {
		*why = problem;
		return PS_E_INVALID_REQUEST;
	}
	return url_rebuild(u, ret);
}

int daemon_api_new(const char *url, const struct secret *token, struct daemon_api **ret,
		   struct daemon_error *err)
{
	struct daemon_api *api;
	const char *why = NULL;
	char *base = NULL;
	int r;

	if (token && !bearer_token_valid(token->data, token->len)) {
		daemon_error_set(err, DAEMON_FAILURE_INPUT,
				 "the token file does not hold a bearer token");
		return PS_E_INVALID_REQUEST;
	}
	r = daemon_api_url_check(url, &base, &why);
	if (r == PS_E_INVALID_REQUEST)
		daemon_error_set(err, DAEMON_FAILURE_INPUT, "invalid popsignd URL: %s", why);
	if (r == PS_E_NOMEM)
		daemon_error_set(err, DAEMON_FAILURE_INTERNAL, "out of memory");
	if (r < 0)
		return r;
	api = calloc(1, sizeof(*api));
	if (!api) {
		free(base);
		daemon_error_set(err, DAEMON_FAILURE_INTERNAL, "out of memory");
		return PS_E_NOMEM;
	}
	api->base = base;
	api->token = token;
	if (strncmp(base, DAEMON_API_UNIX_PREFIX, strlen(DAEMON_API_UNIX_PREFIX)) == 0)
		api->unix_socket = base + strlen(DAEMON_API_UNIX_PREFIX);
	*ret = api;
	return 0;
}

void daemon_api_free(struct daemon_api *api)
{
	if (!api)
		return;
	free(api->base);
	free(api);
}

const char *daemon_api_url(const struct daemon_api *api)
{
	return api->base;
}

/* What a failed transfer means to the caller; errbuf is libcurl's detail. */
static int transfer_failed(const struct daemon_api *api, int r, const char *errbuf,
			   struct daemon_error *err)
{
	switch (r) {
	case PS_E_IO:
		daemon_error_set(err, DAEMON_FAILURE_UNREACHABLE, "cannot reach popsignd at %s: %s",
				 api->base, errbuf);
		break;
	case PS_E_TIMEOUT:
		daemon_error_set(err, DAEMON_FAILURE_UNREACHABLE,
				 "popsignd at %s did not answer in time: %s", api->base, errbuf);
		break;
	case PS_E_TOO_LARGE:
		daemon_error_set(err, DAEMON_FAILURE_MALFORMED,
				 "popsignd's answer is larger than %d bytes", DAEMON_API_RESPONSE_MAX);
		break;
	case PS_E_INVALID_REQUEST:
		daemon_error_set(err, DAEMON_FAILURE_MALFORMED, "%s does not answer HTTP: %s",
				 api->base, errbuf);
		break;
	default:
		daemon_error_set(err, DAEMON_FAILURE_INTERNAL, "cannot send the request: %s",
				 errbuf[0] ? errbuf : ps_strerror(r));
	}
	return r;
}

int daemon_api_request(struct daemon_api *api, const char *method, const char *path,
		       const char *accept, const char *json_body, struct transport_response *ret,
		       struct daemon_error *err)
{
	_cleanup_free_ char *url = NULL;
	char errbuf[TRANSPORT_ERROR_MAX];
	struct transport_request req = {
		.method = method,
		.accept = accept,
		.content_type = json_body ? JSON_TYPE : NULL,
		.body = json_body,
		.body_len = json_body ? strlen(json_body) : 0,
		.bearer = api->token,
		.protocols = "http",
		.connect_timeout_s = DAEMON_API_CONNECT_TIMEOUT_S,
		.timeout_s = DAEMON_API_TIMEOUT_S,
		.max_response = DAEMON_API_RESPONSE_MAX,
	};
	int r;

	/* Over a Unix socket the host part only fills the Host header. */
	if (asprintf(&url, "%s%s", api->unix_socket ? "http://localhost" : api->base, path) < 0) {
		url = NULL;
		daemon_error_set(err, DAEMON_FAILURE_INTERNAL, "out of memory");
		return PS_E_NOMEM;
	}
	req.url = url;
	req.unix_socket = api->unix_socket;
	r = transport_perform(&req, ret, errbuf);
	if (r < 0)
		return transfer_failed(api, r, errbuf, err);
	return 0;
}

/* The PS_E_* value whose status and code match; by status alone when the
 * code is unknown; PS_E_INTERNAL when nothing matches. */
static int error_from_status(long status, const char *code)
{
	static const int all[] = {
#define PS_ERROR_VALUE(name, value, st, c, m) name,
		PS_ERROR_TABLE(PS_ERROR_VALUE)
#undef PS_ERROR_VALUE
	};

	for (size_t i = 1; code && i < ELEMENTSOF(all); i++)
		if (ps_error_http_status(all[i]) == status && strcmp(ps_error_code(all[i]), code) == 0)
			return all[i];
	for (size_t i = 1; i < ELEMENTSOF(all); i++)
		if (ps_error_http_status(all[i]) == status)
			return all[i];
	return PS_E_INTERNAL;
}

int daemon_error_from_answer(long status, const char *body, size_t len, struct daemon_error *err)
{
	_cleanup_json_ json_t *doc = json_loadb(body, len, JSON_REJECT_DUPLICATES, NULL);
	json_t *e = json_object_get(doc, "error");
	const char *code = json_string_value(json_object_get(e, "code"));
	const char *message = json_string_value(json_object_get(e, "message"));

	if (!code || !message) {
		daemon_error_set(err, DAEMON_FAILURE_STATUS,
				 "popsignd's error answer is not an API v1 error body");
		code = NULL;
	} else {
		daemon_error_set(err, DAEMON_FAILURE_STATUS, "%s", message);
		snprintf(err->code, sizeof(err->code), "%s", code);
	}
	err->status = status;
	return error_from_status(status, code);
}

/* 0 if resp has status expected; else fills *err from the answer. */
static int expect_status(const struct transport_response *resp, long expected,
			 struct daemon_error *err)
{
	if (resp->status == expected)
		return 0;
	if (resp->status >= 400)
		return daemon_error_from_answer(resp->status, resp->body, resp->body_len, err);
	daemon_error_set(err, DAEMON_FAILURE_MALFORMED, "popsignd answered HTTP %ld, not %ld",
			 resp->status, expected);
	err->status = resp->status;
	return PS_E_INTERNAL;
}

static int malformed(struct daemon_error *err, const char *what)
{
	daemon_error_set(err, DAEMON_FAILURE_MALFORMED, "malformed answer from popsignd: %s", what);
	return PS_E_INVALID_REQUEST;
}

/* Sends the request and parses a JSON answer with status expected. */
static int request_json(struct daemon_api *api, const char *method, const char *path,
			const char *body, long expected, json_t **ret, struct daemon_error *err)
{
	_cleanup_(transport_response_clear) struct transport_response resp = {0};
	json_t *doc;
	int r;

	r = daemon_api_request(api, method, path, JSON_TYPE, body, &resp, err);
	if (r < 0)
		return r;
	r = expect_status(&resp, expected, err);
	if (r < 0)
		return r;
	doc = json_loadb(resp.body, resp.body_len, JSON_REJECT_DUPLICATES, NULL);
	if (!json_is_object(doc)) {
		json_decref(doc);
		return malformed(err, "the body is not a JSON object");
	}
	*ret = doc;
	return 0;
}

int daemon_key_info_parse(json_t *entry, struct daemon_key_info *ret)
{
	struct daemon_key_info k = {.doc = ret->doc};
	struct {
		const char *member;
		const char **field;
	} members[] = {
		{"name", &k.name},
		{"algorithm", &k.algorithm},
		{"subject", &k.subject},
		{"sha1_thumbprint", &k.sha1_thumbprint},
		{"sha256_fingerprint", &k.sha256_fingerprint},
		{"not_before", &k.not_before},
		{"not_after", &k.not_after},
	};

	for (size_t i = 0; i < ELEMENTSOF(members); i++) {
		*members[i].field = json_string_value(json_object_get(entry, members[i].member));
		if (!*members[i].field)
			return PS_E_INVALID_REQUEST;
	}
	*ret = k;
	return 0;
}

int daemon_api_keys(struct daemon_api *api, json_t **ret_doc, struct daemon_error *err)
{
	_cleanup_json_ json_t *doc = NULL;
	struct daemon_key_info k = {0};
	json_t *keys, *entry;
	size_t i;
	int r;

	r = request_json(api, "GET", "/v1/keys", NULL, 200, &doc, err);
	if (r < 0)
		return r;
	keys = json_object_get(doc, "keys");
	if (!json_is_array(keys))
		return malformed(err, "no \"keys\" array");
	json_array_foreach(keys, i, entry)
		if (daemon_key_info_parse(entry, &k) < 0)
			return malformed(err, "a key lacks a member of API v1");
	*ret_doc = TAKE_PTR(doc);
	return 0;
}

/* Refuses a key name that is not one, so it goes into a URL path as is. */
int daemon_check_key(const char *key, struct daemon_error *err)
{
	if (daemon_key_name_valid(key))
		return 0;
	daemon_error_set(err, DAEMON_FAILURE_INPUT,
			 "invalid key name \"%.80s\": a key name is 1 to %d characters of A-Z, "
			 "a-z, 0-9, '.', '_' and '-'",
			 key ? key : "", DAEMON_KEY_NAME_MAX);
	return PS_E_INVALID_REQUEST;
}

int daemon_api_key_info(struct daemon_api *api, const char *key, struct daemon_key_info **ret,
			struct daemon_error *err)
{
	_cleanup_json_ json_t *doc = NULL;
	struct daemon_key_info *info;
	char path[32 + DAEMON_KEY_NAME_MAX];
	int r;

	r = daemon_check_key(key, err);
	if (r < 0)
		return r;
	snprintf(path, sizeof(path), "/v1/keys/%s", key);
	r = request_json(api, "GET", path, NULL, 200, &doc, err);
	if (r < 0)
		return r;
	info = calloc(1, sizeof(*info));
	if (!info) {
		daemon_error_set(err, DAEMON_FAILURE_INTERNAL, "out of memory");
		return PS_E_NOMEM;
	}
	if (daemon_key_info_parse(doc, info) < 0 || strcmp(info->name, key) != 0) {
		free(info);
		return malformed(err, "the key's description lacks a member of API v1 or names another key");
	}
	info->doc = TAKE_PTR(doc);
	*ret = info;
	return 0;
}

void daemon_key_info_free(struct daemon_key_info *info)
{
	if (!info)
		return;
	json_decref(info->doc);
	free(info);
}

static inline void bio_freep(BIO **b)
{
	BIO_free(*b);
}

static inline void x509_freep(X509 **x)
{
	X509_free(*x);
}

int daemon_cert_pem_to_der(const char *pem, unsigned char **ret, size_t *ret_len)
{
	_cleanup_(bio_freep) BIO *bio = BIO_new_mem_buf(pem, -1);
	_cleanup_(x509_freep) X509 *cert = NULL, *extra = NULL;
	unsigned char *der = NULL;
	int len;

	if (!bio)
		return PS_E_NOMEM;
	cert = PEM_read_bio_X509(bio, NULL, NULL, NULL);
	if (cert)
		extra = PEM_read_bio_X509(bio, NULL, NULL, NULL);
	/* Reading past the last PEM block leaves "no start line" behind. */
	ERR_clear_error();
	if (!cert || extra)
		return PS_E_INVALID_REQUEST;
	len = i2d_X509(cert, &der);
	if (len <= 0)
		return PS_E_NOMEM;
	*ret = der;
	*ret_len = (size_t)len;
	return 0;
}

/* 0 if pem holds exactly one certificate. */
static int check_pem(const char *pem)
{
	unsigned char *der = NULL;
	size_t len = 0;
	int r = daemon_cert_pem_to_der(pem, &der, &len);

	OPENSSL_free(der);
	return r;
}

int daemon_api_ca_cert(struct daemon_api *api, const char *key, char **ret_pem,
		       struct daemon_error *err)
{
	_cleanup_(transport_response_clear) struct transport_response resp = {0};
	char path[32 + DAEMON_KEY_NAME_MAX];
	int r;

	r = daemon_check_key(key, err);
	if (r < 0)
		return r;
	snprintf(path, sizeof(path), "/v1/keys/%s/certificate", key);
	r = daemon_api_request(api, "GET", path, PEM_TYPE, NULL, &resp, err);
	if (r < 0)
		return r;
	r = expect_status(&resp, 200, err);
	if (r < 0)
		return r;
	if (strlen(resp.body) != resp.body_len || check_pem(resp.body) < 0)
		return malformed(err, "the CA certificate is not one PEM certificate");
	*ret_pem = TAKE_PTR(resp.body);
	return 0;
}

static int check_context(const char *context, struct daemon_error *err)
{
	size_t len = strlen(context);

	for (size_t i = 0; i < len; i++)
		if ((unsigned char)context[i] < 0x20 || (unsigned char)context[i] > 0x7e)
			len = 0;
	if (len > 0 && len <= DAEMON_CONTEXT_MAX)
		return 0;
	daemon_error_set(err, DAEMON_FAILURE_INPUT,
			 "invalid signing context: 1 to %d printable ASCII characters",
			 DAEMON_CONTEXT_MAX);
	return PS_E_INVALID_REQUEST;
}

int daemon_check_sign_input(const char *key, const char *code, const char *context,
			    struct daemon_error *err)
{
	int r = daemon_check_key(key, err);

	if (r < 0)
		return r;
	if (!code || code_validate(code, strlen(code)) < 0) {
		daemon_error_set(err, DAEMON_FAILURE_INPUT,
				 "invalid verification code \"%.80s\": a verification code is 1 to %d "
				 "characters of A-Z, a-z and 0-9 (DPS and IoT Hub hand out 48 hex "
				 "characters)",
				 code ? code : "", CODE_MAX_LEN);
		return PS_E_INVALID_CODE;
	}
	return context ? check_context(context, err) : 0;
}

static int sign_body(const char *code, const char *context, char **ret)
{
	_cleanup_json_ json_t *body = json_pack("{s:s}", "verification_code", code);
	char *text;

	if (!body)
		return PS_E_NOMEM;
	if (context && json_object_set_new(body, "context", json_string(context)) < 0)
		return PS_E_NOMEM;
	text = json_dumps(body, JSON_COMPACT);
	if (!text)
		return PS_E_NOMEM;
	*ret = text;
	return 0;
}

static int verification_parse(json_t *doc, const char *key, const char *code,
			      struct daemon_verification *v)
{
	struct {
		const char *member;
		const char **field;
	} members[] = {
		{"key", &v->key},
		{"verification_code", &v->verification_code},
		{"certificate", &v->certificate},
		{"serial", &v->serial},
		{"not_before", &v->not_before},
		{"not_after", &v->not_after},
		{"sha256_fingerprint", &v->sha256_fingerprint},
	};

	for (size_t i = 0; i < ELEMENTSOF(members); i++) {
		*members[i].field = json_string_value(json_object_get(doc, members[i].member));
		if (!*members[i].field)
			return PS_E_INVALID_REQUEST;
	}
	if (strcmp(v->key, key) != 0 || strcmp(v->verification_code, code) != 0)
		return PS_E_INVALID_REQUEST;
	return check_pem(v->certificate);
}

int daemon_api_sign(struct daemon_api *api, const char *key, const char *code,
		    const char *context, struct daemon_verification **ret,
		    struct daemon_error *err)
{
	_cleanup_json_ json_t *doc = NULL;
	_cleanup_free_ char *body = NULL;
	struct daemon_verification *v;
	char path[64 + DAEMON_KEY_NAME_MAX];
	int r;

	r = daemon_check_sign_input(key, code, context, err);
	if (r < 0)
		return r;
	if (sign_body(code, context, &body) < 0) {
		daemon_error_set(err, DAEMON_FAILURE_INTERNAL, "out of memory");
		return PS_E_NOMEM;
	}
	snprintf(path, sizeof(path), "/v1/keys/%s/verification-certificates", key);
	r = request_json(api, "POST", path, body, 201, &doc, err);
	if (r < 0)
		return r;
	v = calloc(1, sizeof(*v));
	if (!v) {
		daemon_error_set(err, DAEMON_FAILURE_INTERNAL, "out of memory");
		return PS_E_NOMEM;
	}
	if (verification_parse(doc, key, code, v) < 0) {
		free(v);
		return malformed(err, "the verification certificate's description does not "
				      "match API v1 or the request");
	}
	v->doc = TAKE_PTR(doc);
	*ret = v;
	return 0;
}

void daemon_verification_free(struct daemon_verification *v)
{
	if (!v)
		return;
	json_decref(v->doc);
	free(v);
}
