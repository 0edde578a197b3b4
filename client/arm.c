#include "arm.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>
#include <openssl/evp.h>

#include "azure_http.h"
#include "error.h"
#include "httpdate.h"
#include "util.h"

#define JSON_TYPE "application/json"
#define SNIPPET_MAX 200

struct arm {
	char *origin;
	struct aad *aad; /* borrowed */
};

static inline void json_decrefp_(json_t **j)
{
	json_decref(*j);
}

#define _cleanup_json_ _cleanup_(json_decrefp_)

/* ---- names and paths ---- */

const char *arm_service_name(enum arm_service s)
{
	return s == ARM_SERVICE_DPS ? "DPS" : "IoT Hub";
}

const char *arm_service_command(enum arm_service s)
{
	return s == ARM_SERVICE_DPS ? "dps" : "iothub";
}

const char *arm_default_api_version(enum arm_service s)
{
	return s == ARM_SERVICE_DPS ? ARM_DPS_API_VERSION : ARM_IOTHUB_API_VERSION;
}

static const char *provider_path(enum arm_service s)
{
	return s == ARM_SERVICE_DPS ? "provisioningServices" : "IotHubs";
}

int arm_endpoint_resolve(const char *url, char **ret_origin, char **ret_resource,
			 const char **why)
{
	_cleanup_free_ char *origin = NULL;
	char *resource;
	int r;

	r = azure_url_check(url, AZURE_URL_HTTPS, &origin, why);
	if (r < 0)
		return r;
	/* A loopback double stands in for the public cloud. */
	if (strcasecmp(origin, ARM_DEFAULT_ENDPOINT) == 0 || strncasecmp(origin, "http://", 7) == 0)
		resource = strdup(AAD_ARM_RESOURCE);
	else
		resource = strdup(origin);
	if (!resource)
		return PS_E_NOMEM;
	*ret_origin = TAKE_PTR(origin);
	*ret_resource = resource;
	return 0;
}

/* A path segment: no control characters, no '/', not "." or "..". */
static bool segment_valid(const char *s)
{
	size_t len = s ? strlen(s) : 0;

	if (len == 0 || len > ARM_SEGMENT_MAX || strcmp(s, ".") == 0 || strcmp(s, "..") == 0)
		return false;
	for (size_t i = 0; i < len; i++)
		if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f || s[i] == '/')
			return false;
	return true;
}

static bool chars_in(const char *s, const char *extra, size_t max)
{
	size_t len = s ? strlen(s) : 0;

	if (len == 0 || len > max)
		return false;
	for (size_t i = 0; i < len; i++)
		if (!((s[i] >= 'A' && s[i] <= 'Z') || (s[i] >= 'a' && s[i] <= 'z') ||
		      (s[i] >= '0' && s[i] <= '9') || strchr(extra, s[i])))
			return false;
	return true;
}

int arm_target_check(const struct arm_target *t, const char *cert, const char **why)
{
	size_t cert_max = t->service == ARM_SERVICE_IOTHUB ? 64 : 256;

	if (!segment_valid(t->subscription))
		*why = "--subscription (or $AZURE_SUBSCRIPTION_ID): 1 to 256 characters, no '/'";
	else if (!segment_valid(t->resource_group))
		*why = "--resource-group: 1 to 256 characters, no '/'";
	else if (!segment_valid(t->name))
		*why = t->service == ARM_SERVICE_DPS ? "--dps-name: 1 to 256 characters, no '/'"
						     : "--hub-name: 1 to 256 characters, no '/'";
	else if (t->api_version && !chars_in(t->api_version, ".-", ARM_API_VERSION_MAX))
		*why = "--api-version: 1 to 32 of A-Z a-z 0-9 . -";
	else if (cert && !chars_in(cert, "-._", cert_max))
		*why = t->service == ARM_SERVICE_IOTHUB
			       ? "--certificate-name: 1 to 64 of A-Z a-z 0-9 - . _"
			       : "--certificate-name: 1 to 256 of A-Z a-z 0-9 - . _";
	else
		return 0;
	return PS_E_INVALID_REQUEST;
}

int arm_certificate_path(const struct arm_target *t, const char *cert, char **ret)
{
	char *sub = curl_easy_escape(NULL, t->subscription, 0);
	char *rg = curl_easy_escape(NULL, t->resource_group, 0);
	char *name = curl_easy_escape(NULL, t->name, 0);
	char *c = cert ? curl_easy_escape(NULL, cert, 0) : NULL, *path = NULL;
	int n = -1;

	if (sub && rg && name && (c || !cert))
		n = asprintf(&path,
			     "/subscriptions/%s/resourceGroups/%s/providers/Microsoft.Devices/%s/%s"
			     "/certificates%s%s",
			     sub, rg, provider_path(t->service), name, c ? "/" : "", c ? c : "");
	curl_free(sub);
	curl_free(rg);
	curl_free(name);
	curl_free(c);
	if (n < 0)
		return PS_E_NOMEM;
	*ret = path;
	return 0;
}

bool arm_etag_valid(const char *etag)
{
	size_t len = etag ? strlen(etag) : 0;

	if (len == 0 || len > ARM_ETAG_MAX)
		return false;
	/* It goes back in a header line: nothing that could end or split it. */
	for (size_t i = 0; i < len; i++)
		if ((unsigned char)etag[i] <= 0x20 || (unsigned char)etag[i] >= 0x7f)
			return false;
	return true;
}

/* ---- certificate descriptions ---- */

static bool thumbprint_valid(const char *t)
{
	return t && strlen(t) == 40 && strspn(t, "0123456789ABCDEFabcdef") == 40;
}

/* A member that must be a string or null/absent: 0 and *ret (NULL for null
 * or absent), or PS_E_INVALID_REQUEST for another type. */
static int optional_string(json_t *o, const char *key, const char **ret)
{
	json_t *v = json_object_get(o, key);

	if (v && !json_is_null(v) && !json_is_string(v))
		return PS_E_INVALID_REQUEST;
	*ret = json_string_value(v);
	return 0;
}

static int optional_members(json_t *res, json_t *p, struct arm_certificate *c)
{
	if (optional_string(res, "id", &c->id) < 0 || optional_string(res, "type", &c->type) < 0 ||
	    optional_string(p, "verificationCode", &c->verification_code) < 0 ||
	    optional_string(p, "certificate", &c->certificate) < 0 ||
	    optional_string(p, "created", &c->created_text) < 0 ||
	    optional_string(p, "updated", &c->updated_text) < 0)
		return PS_E_INVALID_REQUEST;
	c->has_created = c->created_text && httpdate_parse(c->created_text, &c->created) == 0;
	c->has_updated = c->updated_text && httpdate_parse(c->updated_text, &c->updated) == 0;
	return 0;
}

int arm_certificate_parse(json_t *res, struct arm_certificate *ret)
{
	json_t *p = json_object_get(res, "properties");
	json_t *verified = json_object_get(p, "isVerified");
	struct arm_certificate c = {0};

	if (!json_is_object(res) || !json_is_object(p) || !json_is_boolean(verified))
		return PS_E_INVALID_REQUEST;
	c.name = json_string_value(json_object_get(res, "name"));
	c.etag = json_string_value(json_object_get(res, "etag"));
	c.subject = json_string_value(json_object_get(p, "subject"));
	c.thumbprint = json_string_value(json_object_get(p, "thumbprint"));
	c.expiry_text = json_string_value(json_object_get(p, "expiry"));
	c.is_verified = json_is_true(verified);
	if (!c.name || !arm_etag_valid(c.etag) || !c.subject || !thumbprint_valid(c.thumbprint) ||
	    !c.expiry_text || httpdate_parse(c.expiry_text, &c.expiry) < 0 ||
	    optional_members(res, p, &c) < 0)
		return PS_E_INVALID_REQUEST;
	*ret = c;
	return 0;
}

static int certificate_from_doc(json_t *doc, struct arm_certificate **ret)
{
	struct arm_certificate *c = calloc(1, sizeof(*c));

	if (!c)
		return PS_E_NOMEM;
	if (arm_certificate_parse(doc, c) < 0) {
		free(c);
		return PS_E_INVALID_REQUEST;
	}
	c->doc = json_incref(doc);
	*ret = c;
	return 0;
}

int arm_certificate_from_body(const char *body, size_t len, struct arm_certificate **ret)
{
	_cleanup_json_ json_t *doc = json_loadb(body, len, JSON_REJECT_DUPLICATES, NULL);

	if (!doc)
		return PS_E_INVALID_REQUEST;
	return certificate_from_doc(doc, ret);
}

static int list_from_doc(json_t *doc, struct arm_certificate_list **ret)
{
	json_t *value = json_object_get(doc, "value"), *item;
	struct arm_certificate_list *l;
	size_t i;

	if (!json_is_array(value))
		return PS_E_INVALID_REQUEST;
	l = calloc(1, sizeof(*l));
	if (!l || !(l->items = calloc(json_array_size(value) + 1, sizeof(*l->items)))) {
		free(l);
		return PS_E_NOMEM;
	}
	json_array_foreach(value, i, item) {
		if (arm_certificate_parse(item, &l->items[i]) < 0) {
			arm_certificate_list_free(l);
			return PS_E_INVALID_REQUEST;
		}
	}
	l->n = json_array_size(value);
	l->doc = json_incref(doc);
	*ret = l;
	return 0;
}

int arm_certificate_list_from_body(const char *body, size_t len,
				   struct arm_certificate_list **ret)
{
	_cleanup_json_ json_t *doc = json_loadb(body, len, JSON_REJECT_DUPLICATES, NULL);

	if (!json_is_object(doc))
		return PS_E_INVALID_REQUEST;
	return list_from_doc(doc, ret);
}

void arm_certificate_free(struct arm_certificate *c)
{
	if (!c)
		return;
	json_decref(c->doc);
	free(c);
}

void arm_certificate_list_free(struct arm_certificate_list *l)
{
	if (!l)
		return;
	json_decref(l->doc);
	free(l->items);
	free(l);
}

/* ---- error answers ---- */

static enum azure_failure failure_for_status(long status)
{
	if (status == 401 || status == 403)
		return AZURE_FAILURE_UNAUTHENTICATED;
	if (status == 408 || status == 429 || (status >= 500 && status <= 599))
		return AZURE_FAILURE_UNREACHABLE;
	if (status >= 400 && status <= 499)
		return AZURE_FAILURE_REFUSED;
	return AZURE_FAILURE_MALFORMED;
}

/* Azure's code, a number or a string, as text. */
static void code_text(json_t *code, char *buf, size_t n)
{
	if (json_is_integer(code))
		snprintf(buf, n, "%" JSON_INTEGER_FORMAT, json_integer_value(code));
	else if (json_is_string(code))
		azure_error_copy(buf, n, json_string_value(code));
	else
		buf[0] = '\0';
}

/* The start of an unreadable body, for the user to make sense of. */
static void body_snippet(const char *body, size_t len, char *buf, size_t n)
{
	size_t k = len < SNIPPET_MAX ? len : SNIPPET_MAX;
	char tmp[SNIPPET_MAX + 1];

	memcpy(tmp, body, k);
	tmp[k] = '\0';
	/* A NUL inside ends the text early; that is fine for a glimpse. */
	/* cppcheck-suppress knownConditionTrueFalse ; true when len > SNIPPET_MAX */
	snprintf(buf, n, "%s%s", tmp, len > k ? "..." : "");
}

int arm_error_from_answer(long status, const char *body, size_t len, struct azure_error *err)
{
	_cleanup_json_ json_t *doc = json_loadb(body, len, 0, NULL);
	json_t *e = json_is_object(json_object_get(doc, "error")) ? json_object_get(doc, "error") : doc;
	const char *message = json_string_value(json_object_get(e, "message"));
	char snippet[SNIPPET_MAX + 4];

	if (message) {
		azure_error_set(err, failure_for_status(status), "%s", message);
		code_text(json_object_get(e, "code"), err->code, sizeof(err->code));
		err->status = status;
		return 0;
	}
	body_snippet(body, len, snippet, sizeof(snippet));
	azure_error_set(err, failure_for_status(status), "HTTP %ld without Azure's error description%s%s",
			status, len ? ": " : "", snippet);
	code_text(json_object_get(e, "code"), err->code, sizeof(err->code));
	err->status = status;
	return PS_E_INVALID_REQUEST;
}

bool arm_error_certificate_missing(const struct azure_error *err)
{
	return err->status == 404 && strspn(err->code, "0123456789") == strlen(err->code);
}

/* ---- any answer ---- */

static bool blank(const char *body, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if (!strchr(" \t\r\n", body[i]))
			return false;
	return true;
}

static bool looks_like_certificate(json_t *doc)
{
	return json_object_get(json_object_get(doc, "properties"), "thumbprint") != NULL;
}

int arm_answer_parse(long status, const char *body, size_t len, struct arm_answer *ret)
{
	_cleanup_json_ json_t *doc = NULL;

	*ret = (struct arm_answer){0};
	if (status < 200 || status > 299) {
		ret->kind = ARM_ANSWER_ERROR;
		(void)arm_error_from_answer(status, body, len, &ret->error);
		return 0;
	}
	if (blank(body, len)) {
		ret->kind = ARM_ANSWER_EMPTY;
		return 0;
	}
	doc = json_loadb(body, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, NULL);
	if (json_is_null(doc)) {
		ret->kind = ARM_ANSWER_EMPTY;
		return 0;
	}
	if (!json_is_object(doc))
		return PS_E_INVALID_REQUEST;
	if (json_object_get(doc, "value")) {
		ret->kind = ARM_ANSWER_LIST;
		return list_from_doc(doc, &ret->list);
	}
	if (looks_like_certificate(doc)) {
		ret->kind = ARM_ANSWER_CERTIFICATE;
		return certificate_from_doc(doc, &ret->certificate);
	}
	ret->kind = ARM_ANSWER_RESOURCE;
	return 0;
}

void arm_answer_clear(struct arm_answer *a)
{
	arm_certificate_free(a->certificate);
	arm_certificate_list_free(a->list);
	*a = (struct arm_answer){0};
}

/* ---- the client ---- */

int arm_new(const char *origin, struct aad *aad, struct arm **ret, struct azure_error *err)
{
	struct arm *arm = calloc(1, sizeof(*arm));

	if (!arm || !(arm->origin = strdup(origin))) {
		free(arm);
		azure_error_set(err, AZURE_FAILURE_INTERNAL, "out of memory");
		return PS_E_NOMEM;
	}
	arm->aad = aad;
	*ret = arm;
	return 0;
}

void arm_free(struct arm *arm)
{
	if (!arm)
		return;
	free(arm->origin);
	free(arm);
}

/* One operation: what it is for messages, and what it sends. */
struct arm_call {
	const char *method;
	const char *cert;   /* NULL: the collection */
	const char *suffix; /* after the certificate's path, or "" */
	const char *etag;   /* for If-Match, or NULL */
	const char *body;   /* JSON, or NULL */
	char what[512];     /* "uploading certificate 'c' to DPS 'd'" */
};

static int nomem(struct azure_error *err)
{
	azure_error_set(err, AZURE_FAILURE_INTERNAL, "out of memory");
	return PS_E_NOMEM;
}

static int call_url(const struct arm *arm, const struct arm_target *t, const struct arm_call *c,
		    char **ret)
{
	_cleanup_free_ char *path = NULL;
	const char *v = t->api_version ? t->api_version : arm_default_api_version(t->service);

	char *url;

	if (arm_certificate_path(t, c->cert, &path) < 0 ||
	    asprintf(&url, "%s%s%s?api-version=%s", arm->origin, path, c->suffix, v) < 0)
		return PS_E_NOMEM;
	*ret = url;
	return 0;
}

/* The PS_E_* value that goes with a failure from an error answer. */
static int error_value(const struct azure_error *err)
{
	switch (err->failure) {
	case AZURE_FAILURE_UNAUTHENTICATED:
		return PS_E_UNAUTHORIZED;
	case AZURE_FAILURE_UNREACHABLE:
		return PS_E_IO;
	default:
		return err->status == 404 ? PS_E_NOT_FOUND : PS_E_INVALID_REQUEST;
	}
}

/* Sends c; 0 with a 2xx answer in *ret, else *err filled. */
static int call(struct arm *arm, const struct arm_target *t, const struct arm_call *c,
		struct transport_response *ret, struct azure_error *err)
{
	_cleanup_(transport_response_clear) struct transport_response resp = {0};
	_cleanup_free_ char *url = NULL, *if_match = NULL;
	const char *headers[2] = {NULL, NULL};
	struct azure_http_request req = {
		.what = "Azure Resource Manager", .method = c->method, .headers = headers,
		.content_type = c->body ? JSON_TYPE : NULL, .body = c->body,
		.body_len = c->body ? strlen(c->body) : 0,
	};
	unsigned tries = 0;
	int r;

	if (call_url(arm, t, c, &url) < 0)
		return nomem(err);
	if (c->etag && asprintf(&if_match, "If-Match: %s", c->etag) < 0) {
		if_match = NULL; /* asprintf() leaves it undefined on failure */
		return nomem(err);
	}
	headers[0] = if_match;
	req.url = url;
	/* Per request: a long flow gets a fresh token before the old expires. */
	r = aad_token(arm->aad, &req.bearer, err);
	if (r < 0)
		return r;
	r = azure_http_send(&req, &resp, &tries, err);
	if (r == 0 && resp.status >= 200 && resp.status <= 299) {
		*ret = resp;
		resp = (struct transport_response){0};
		return 0;
	}
	if (r == 0) {
		(void)arm_error_from_answer(resp.status, resp.body, resp.body_len, err);
		err->tries = tries;
	}
	azure_error_prefix(err, "%s", c->what);
	return r < 0 ? r : error_value(err);
}

/* Sends c and parses the answer as one certificate description. */
static int call_certificate(struct arm *arm, const struct arm_target *t, const struct arm_call *c,
			    struct arm_certificate **ret, struct azure_error *err)
{
	_cleanup_(transport_response_clear) struct transport_response resp = {0};
	int r = call(arm, t, c, &resp, err);

	if (r < 0)
		return r;
	r = arm_certificate_from_body(resp.body, resp.body_len, ret);
	if (r == PS_E_NOMEM)
		return nomem(err);
	if (r < 0) {
		azure_error_set(err, AZURE_FAILURE_MALFORMED,
				"%s: the answer is not a certificate description", c->what);
		err->status = resp.status;
	}
	return r;
}

static void describe(struct arm_call *c, const struct arm_target *t, const char *verb,
		     const char *prep)
{
	if (c->cert)
		snprintf(c->what, sizeof(c->what), "%s certificate '%s' %s %s '%s'", verb, c->cert,
			 prep, arm_service_name(t->service), t->name);
	else
		snprintf(c->what, sizeof(c->what), "%s the certificates of %s '%s'", verb,
			 arm_service_name(t->service), t->name);
}

int arm_get(struct arm *arm, const struct arm_target *t, const char *cert,
	    struct arm_certificate **ret, struct azure_error *err)
{
	struct arm_call c = {.method = "GET", .cert = cert, .suffix = ""};

	describe(&c, t, "reading", "of");
	return call_certificate(arm, t, &c, ret, err);
}

int arm_list(struct arm *arm, const struct arm_target *t, struct arm_certificate_list **ret,
	     struct azure_error *err)
{
	_cleanup_(transport_response_clear) struct transport_response resp = {0};
	struct arm_call c = {.method = "GET", .suffix = ""};
	int r;

	describe(&c, t, "listing", "of");
	r = call(arm, t, &c, &resp, err);
	if (r < 0)
		return r;
	r = arm_certificate_list_from_body(resp.body, resp.body_len, ret);
	if (r == PS_E_NOMEM)
		return nomem(err);
	if (r < 0) {
		azure_error_set(err, AZURE_FAILURE_MALFORMED,
				"%s: the answer is not a list of certificate descriptions", c.what);
		err->status = resp.status;
	}
	return r;
}

/* {member: base64 of text}, or {member: text} when raw; wrapped under
 * "properties" when wrap. */
static char *certificate_body(const char *text, bool raw, bool wrap)
{
	size_t len = strlen(text);
	_cleanup_free_ char *b64 = raw ? NULL : malloc(4 * ((len + 2) / 3) + 1);
	json_t *doc;
	char *out;

	if (!raw && !b64)
		return NULL;
	if (!raw)
		EVP_EncodeBlock((unsigned char *)b64, (const unsigned char *)text, (int)len);
	/* NOLINTNEXTLINE(clang-analyzer-unix.Malloc): freed by _cleanup_free_ */
	doc = json_pack("{s:s}", "certificate", raw ? text : b64);
	if (doc && wrap)
		doc = json_pack("{s:o}", "properties", doc);
	out = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
	json_decref(doc);
	return out;
}

int arm_put(struct arm *arm, const struct arm_target *t, const char *cert, const char *pem,
	    struct arm_certificate **ret, struct azure_error *err)
{
	/* The recordings show every version taking the body under
	 * "properties", and never "isVerified": it is not sent. */
	_cleanup_free_ char *body = certificate_body(pem, false, true);
	struct arm_call c = {.method = "PUT", .cert = cert, .suffix = "", .body = body};

	if (!body)
		return nomem(err);
	describe(&c, t, "uploading", "to");
	return call_certificate(arm, t, &c, ret, err);
}

int arm_generate_code(struct arm *arm, const struct arm_target *t, const char *cert,
		      const char *etag, struct arm_certificate **ret, struct azure_error *err)
{
	struct arm_call c = {
		.method = "POST", .cert = cert, .suffix = "/generateVerificationCode", .etag = etag,
	};
	struct arm_certificate *got = NULL;
	int r;

	describe(&c, t, "getting a verification code for", "of");
	r = call_certificate(arm, t, &c, &got, err);
	if (r < 0)
		return r;
	if (!got->verification_code) {
		arm_certificate_free(got);
		azure_error_set(err, AZURE_FAILURE_MALFORMED, "%s: the answer has no verificationCode",
				c.what);
		return PS_E_INVALID_REQUEST;
	}
	*ret = got;
	return 0;
}

int arm_verify(struct arm *arm, const struct arm_target *t, const char *cert, const char *etag,
	       const char *pem, struct arm_certificate **ret, struct azure_error *err)
{
	_cleanup_free_ char *body = certificate_body(pem, t->service == ARM_SERVICE_IOTHUB, false);
	struct arm_call c = {
		.method = "POST", .cert = cert, .suffix = "/verify", .etag = etag, .body = body,
	};

	if (!body)
		return nomem(err);
	describe(&c, t, "verifying", "of");
	return call_certificate(arm, t, &c, ret, err);
}

int arm_delete(struct arm *arm, const struct arm_target *t, const char *cert, const char *etag,
	       struct azure_error *err)
{
	_cleanup_(transport_response_clear) struct transport_response resp = {0};
	struct arm_call c = {.method = "DELETE", .cert = cert, .suffix = "", .etag = etag};

	describe(&c, t, "deleting", "from");
	return call(arm, t, &c, &resp, err);
}
