#include "aad.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <openssl/crypto.h>

#include "azure_http.h"
#include "error.h"
#include "jwt.h"
#include "text.h"
#include "util.h"
#include "wipe.h"

#define ENV_TENANT "AZURE_TENANT_ID"
#define ENV_CLIENT "AZURE_CLIENT_ID"
#define ENV_SECRET "AZURE_CLIENT_SECRET"
#define ENV_CERT "AZURE_CLIENT_CERTIFICATE_PATH"
#define ENV_AUTHORITY "AZURE_AUTHORITY_HOST"
#define ENV_IMDS "AZURE_POD_IDENTITY_AUTHORITY_HOST"
#define FORM_TYPE "application/x-www-form-urlencoded"
#define ASSERTION_TYPE "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#define TENANT_MAX 256
#define AAD_LIFETIME_MAX_S (365LL * 86400)

struct aad {
	enum aad_source source;
	char *describe;
	char *resource;
	char *token_file;   /* AAD_SOURCE_TOKEN_FILE */
	char *tenant;       /* client secret and certificate */
	char *client_id;    /* those, and a managed identity's, or NULL */
	char *authority;    /* origin of Azure AD */
	char *cert_path;    /* AAD_SOURCE_CLIENT_CERTIFICATE */
	char *imds;         /* origin of the metadata endpoint */
	struct secret *token;
	int64_t refresh_at; /* mono_ms() */
};

static inline void json_decrefp_(json_t **j)
{
	json_decref(*j);
}

#define _cleanup_json_ _cleanup_(json_decrefp_)

/* ---- tokens in locked memory ---- */

bool aad_token_valid(const char *token, size_t len)
{
	size_t i = 0;

	if (!token || len == 0 || len > AAD_TOKEN_MAX)
		return false;
	for (; i < len; i++) {
		char c = token[i];

		if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
		      c == '-' || c == '.' || c == '_' || c == '~' || c == '+' || c == '/'))
			break;
	}
	if (i == 0)
		return false;
	while (i < len && token[i] == '=')
		i++;
	return i == len;
}

int aad_read_token_file(const char *path, struct secret **ret)
{
	struct secret *s = NULL;
	/* The token and a line end. */
	int r = secret_read_file_max(path, AAD_TOKEN_MAX + 2, &s);

	if (r == 0 && (s->len > AAD_TOKEN_MAX || !aad_token_valid(s->data, s->len))) {
		r = s->len > AAD_TOKEN_MAX ? PS_E_TOO_LARGE : PS_E_INVALID_REQUEST;
		secret_free(s);
		return r;
	}
	if (r == 0)
		*ret = s;
	return r;
}

/* ---- answers ---- */

/* A number, or a string of decimal digits, as a count of seconds. */
static int seconds_value(json_t *v, int64_t *ret)
{
	unsigned long long n;

	if (json_is_integer(v)) {
		*ret = json_integer_value(v);
		return 0;
	}
	if (json_is_string(v) && parse_uint(json_string_value(v), 0, INT64_MAX, &n) == 0) {
		*ret = (int64_t)n;
		return 0;
	}
	return PS_E_INVALID_REQUEST;
}

/* Fills *err from an answer that carries Azure AD's error shape. */
static int answer_refused(const char *who, long status, json_t *doc, struct azure_error *err)
{
	const char *code = json_string_value(json_object_get(doc, "error"));
	const char *desc = json_string_value(json_object_get(doc, "error_description"));
	bool transient = status == 429 || status >= 500;

	azure_error_set(err, transient ? AZURE_FAILURE_UNREACHABLE : AZURE_FAILURE_UNAUTHENTICATED,
			"%s: %s", who, desc ? desc : code ? "(no error_description)" : "refused");
	err->status = status;
	if (code)
		azure_error_copy(err->code, sizeof(err->code), code);
	return PS_E_UNAUTHORIZED;
}

int aad_parse_token_answer(const char *who, long status, const char *body, size_t len,
			   json_t **ret_doc, struct aad_token_answer *ret, struct azure_error *err)
{
	_cleanup_json_ json_t *doc = json_loadb(body, len, JSON_REJECT_DUPLICATES, NULL);
	json_t *token = json_object_get(doc, "access_token");
	int64_t expires_in;

	if (json_is_object(doc) && (status != 200 || json_object_get(doc, "error")))
		return answer_refused(who, status, doc, err);
	if (status != 200) {
		azure_error_set(err, status == 429 || status >= 500 ? AZURE_FAILURE_UNREACHABLE
								    : AZURE_FAILURE_UNAUTHENTICATED,
				"%s answered HTTP %ld without an error description", who, status);
		err->status = status;
		return PS_E_UNAUTHORIZED;
	}
	if (!json_is_string(token) ||
	    !aad_token_valid(json_string_value(token), json_string_length(token)) ||
	    seconds_value(json_object_get(doc, "expires_in"), &expires_in) < 0) {
		azure_error_set(err, AZURE_FAILURE_MALFORMED,
				"%s's answer has no usable access_token and expires_in", who);
		err->status = status;
		return PS_E_INVALID_REQUEST;
	}
	ret->access_token = json_string_value(token);
	ret->len = json_string_length(token);
	ret->expires_in = expires_in;
	*ret_doc = TAKE_PTR(doc);
	return 0;
}

/* "YYYY-MM-DD HH:MM:SS" and optional ".ffffff", local time. */
static int local_time_parse(const char *text, int64_t *ret)
{
	struct tm tm = {0};
	const char *end = strptime(text, "%Y-%m-%d %H:%M:%S", &tm);
	time_t t;

	if (!end)
		return PS_E_INVALID_REQUEST;
	if (*end == '.')
		for (end++; *end >= '0' && *end <= '9'; end++)
			;
	if (*end)
		return PS_E_INVALID_REQUEST;
	tm.tm_isdst = -1;
	t = mktime(&tm);
	if (t == (time_t)-1)
		return PS_E_INVALID_REQUEST;
	*ret = t;
	return 0;
}

int aad_parse_cli_output(const char *out, size_t len, int64_t now, json_t **ret_doc,
			 struct aad_token_answer *ret)
{
	_cleanup_json_ json_t *doc = json_loadb(out, len, JSON_REJECT_DUPLICATES, NULL);
	json_t *token = json_object_get(doc, "accessToken");
	const char *local = json_string_value(json_object_get(doc, "expiresOn"));
	int64_t expires;

	if (!json_is_string(token) ||
	    !aad_token_valid(json_string_value(token), json_string_length(token)))
		return PS_E_INVALID_REQUEST;
	if (seconds_value(json_object_get(doc, "expires_on"), &expires) < 0 &&
	    (!local || local_time_parse(local, &expires) < 0))
		return PS_E_INVALID_REQUEST;
	ret->access_token = json_string_value(token);
	ret->len = json_string_length(token);
	ret->expires_in = expires - now;
	*ret_doc = TAKE_PTR(doc);
	return 0;
}

/* ---- choosing the source ---- */

static const char *env(const char *name)
{
	const char *v = getenv(name);

	return v && v[0] ? v : NULL;
}

/* A tenant is a GUID or a domain name ("contoso.onmicrosoft.com"): it goes
 * into the token URL's path as it is. */
static bool tenant_valid(const char *t)
{
	size_t len = strlen(t);

	if (len == 0 || len > TENANT_MAX)
		return false;
	for (size_t i = 0; i < len; i++)
		if (!((t[i] >= 'A' && t[i] <= 'Z') || (t[i] >= 'a' && t[i] <= 'z') ||
		      (t[i] >= '0' && t[i] <= '9') || t[i] == '-' || t[i] == '.'))
			return false;
	return true;
}

/* An executable regular file named name in a directory of $PATH. */
static bool on_path(const char *name)
{
	const char *path = getenv("PATH");
	_cleanup_free_ char *copy = path ? strdup(path) : NULL;
	char *save = NULL;
	struct stat st;

	/* NOLINTNEXTLINE(clang-analyzer-unix.Malloc): freed by _cleanup_free_ */
	for (char *dir = copy ? strtok_r(copy, ":", &save) : NULL; dir;
	     dir = strtok_r(NULL, ":", &save)) {
		_cleanup_free_ char *file = NULL;

		if (asprintf(&file, "%s/%s", dir, name) < 0) {
			file = NULL;
			continue;
		}
		if (stat(file, &st) == 0 && S_ISREG(st.st_mode) && access(file, X_OK) == 0)
			return true;
	}
	return false;
}

/* Sets *ret to the checked origin of the URL in variable var (or dflt). */
static int endpoint_from_env(const char *var, const char *dflt, enum azure_url_policy policy,
			     char **ret, struct azure_error *err)
{
	const char *url = env(var), *why = NULL;
	int r = azure_url_check(url ? url : dflt, policy, ret, &why);

	if (r == PS_E_INVALID_REQUEST)
		azure_error_set(err, AZURE_FAILURE_INPUT, "invalid %s: %s", var, why);
	else if (r < 0)
		azure_error_set(err, AZURE_FAILURE_INTERNAL, "out of memory");
	return r;
}

static int set_describe(struct aad *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int set_describe(struct aad *a, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vasprintf(&a->describe, fmt, ap);
	va_end(ap);
	if (n < 0) {
		a->describe = NULL;
		return PS_E_NOMEM;
	}
	return 0;
}

/* Sources 2 and 3, if the environment names one. */
static int pick_application(struct aad *a, bool *ret_found, struct azure_error *err)
{
	const char *tenant = env(ENV_TENANT), *client = env(ENV_CLIENT), *cert = env(ENV_CERT);
	int r;

	*ret_found = false;
	if (!tenant || !client || (!env(ENV_SECRET) && !cert))
		return 0;
	*ret_found = true;
	if (!tenant_valid(tenant)) {
		azure_error_set(err, AZURE_FAILURE_INPUT,
				"invalid " ENV_TENANT ": not a tenant id or domain name");
		return PS_E_INVALID_REQUEST;
	}
	r = endpoint_from_env(ENV_AUTHORITY, AAD_DEFAULT_AUTHORITY, AZURE_URL_HTTPS, &a->authority,
			      err);
	if (r < 0)
		return r;
	a->source = env(ENV_SECRET) ? AAD_SOURCE_CLIENT_SECRET : AAD_SOURCE_CLIENT_CERTIFICATE;
	a->tenant = strdup(tenant);
	a->client_id = strdup(client);
	a->cert_path = a->source == AAD_SOURCE_CLIENT_CERTIFICATE ? strdup(cert) : NULL;
	if (!a->tenant || !a->client_id || (a->source == AAD_SOURCE_CLIENT_CERTIFICATE && !a->cert_path))
		return PS_E_NOMEM;
	return set_describe(a, a->source == AAD_SOURCE_CLIENT_SECRET
				       ? "client secret of application %s (" ENV_SECRET ")"
				       : "certificate of application %s (" ENV_CERT ")",
			    client);
}

static int pick_managed_identity(struct aad *a, const struct aad_options *o,
				 struct azure_error *err)
{
	int r = endpoint_from_env(ENV_IMDS, AAD_DEFAULT_IMDS, AZURE_URL_ANY_HTTP, &a->imds, err);

	if (r < 0)
		return r;
	a->source = AAD_SOURCE_MANAGED_IDENTITY;
	if (o->managed_identity_client_id) {
		a->client_id = strdup(o->managed_identity_client_id);
		if (!a->client_id)
			return PS_E_NOMEM;
		return set_describe(a, "managed identity %s", a->client_id);
	}
	return set_describe(a, "%s", "managed identity of this machine");
}

/* Fills a for the first source that applies. */
static int pick_source(struct aad *a, const struct aad_options *o, struct azure_error *err)
{
	bool found = false;
	int r;

	if (o->access_token_file) {
		a->source = AAD_SOURCE_TOKEN_FILE;
		a->token_file = strdup(o->access_token_file);
		return a->token_file ? set_describe(a, "access token file %s", a->token_file)
				     : PS_E_NOMEM;
	}
	r = pick_application(a, &found, err);
	if (r < 0 || found)
		return r;
	if (o->managed_identity)
		return pick_managed_identity(a, o, err);
	if (on_path("az")) {
		a->source = AAD_SOURCE_AZURE_CLI;
		return set_describe(a, "%s", "Azure CLI (az account get-access-token)");
	}
	azure_error_set(err, AZURE_FAILURE_UNAUTHENTICATED,
			"no Azure credentials: use --access-token-file FILE, set " ENV_TENANT
			", " ENV_CLIENT " and " ENV_SECRET " or " ENV_CERT
			", use --managed-identity, or install the Azure CLI and run 'az login'");
	return PS_E_UNAUTHORIZED;
}

int aad_new(const struct aad_options *o, struct aad **ret, struct azure_error *err)
{
	struct aad *a = calloc(1, sizeof(*a));
	int r = PS_E_NOMEM;

	if (!a)
		goto nomem;
	a->resource = strdup(o->resource ? o->resource : AAD_ARM_RESOURCE);
	if (!a->resource)
		goto nomem;
	r = pick_source(a, o, err);
	if (r == PS_E_NOMEM)
		goto nomem;
	if (r < 0) {
		aad_free(a);
		return r;
	}
	*ret = a;
	return 0;
nomem:
	aad_free(a);
	azure_error_set(err, AZURE_FAILURE_INTERNAL, "out of memory");
	return PS_E_NOMEM;
}

void aad_free(struct aad *a)
{
	if (!a)
		return;
	secret_free(a->token);
	free(a->describe);
	free(a->resource);
	free(a->token_file);
	free(a->tenant);
	free(a->client_id);
	free(a->authority);
	free(a->cert_path);
	free(a->imds);
	free(a);
}

enum aad_source aad_source(const struct aad *a)
{
	return a->source;
}

const char *aad_describe(const struct aad *a)
{
	return a->describe;
}

/* ---- getting a token ---- */

/* CLOCK_MONOTONIC in milliseconds: lifetimes of a few seconds (tests) must
 * not round to nothing. */
static int64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* An x-www-form-urlencoded body built in memory that is wiped when freed:
 * it may hold a client secret. */
struct form {
	char *data;
	size_t len;
	int r;
};

static void form_add(struct form *f, const char *name, const char *value)
{
	char *esc, *d;
	size_t need;

	if (f->r < 0)
		return;
	esc = curl_easy_escape(NULL, value, 0);
	need = f->len + strlen(name) + (esc ? strlen(esc) : 0) + 3;
	d = esc ? wipe_realloc(f->data, need) : NULL;
	if (!d) {
		f->r = PS_E_NOMEM;
		curl_free(esc);
		return;
	}
	f->data = d;
	f->len += (size_t)sprintf(d + f->len, "%s%s=%s", f->len ? "&" : "", name, esc);
	curl_free(esc);
}

/* The client assertion for source 3, or an error about the PEM file. */
static int make_assertion(const struct aad *a, const char *audience, char **ret,
			  struct azure_error *err)
{
	EVP_PKEY *key = NULL;
	X509 *cert = NULL;
	int r = jwt_load_pem(a->cert_path, &key, &cert);

	if (r == 0) {
		r = jwt_client_assertion(key, cert, audience, a->client_id, time(NULL), ret);
		EVP_PKEY_free(key);
		X509_free(cert);
	}
	if (r == PS_E_NOMEM)
		azure_error_set(err, AZURE_FAILURE_INTERNAL, "out of memory");
	else if (r < 0)
		azure_error_set(err, AZURE_FAILURE_UNAUTHENTICATED,
				"cannot use " ENV_CERT " %s: %s", a->cert_path,
				r == PS_E_PERMISSIONS	? "group or others may access it (chmod 600)"
				: r == PS_E_NOT_FOUND	? "no such file"
				: r == PS_E_UNSUPPORTED ? "the key is not an RSA key"
				: r == PS_E_INVALID_REQUEST
					? "no unencrypted private key with its certificate in it"
					: ps_strerror(r));
	return r;
}

static int application_form(const struct aad *a, const char *url, struct form *f,
			    struct azure_error *err)
{
	_cleanup_free_ char *scope = NULL, *assertion = NULL;
	int r;

	if (asprintf(&scope, "%s/.default", a->resource) < 0) {
		scope = NULL;
		return PS_E_NOMEM;
	}
	form_add(f, "grant_type", "client_credentials");
	form_add(f, "client_id", a->client_id);
	form_add(f, "scope", scope);
	if (a->source == AAD_SOURCE_CLIENT_SECRET) {
		/* Read where it is each time: no second copy of it lives here. */
		form_add(f, "client_secret", getenv(ENV_SECRET) ? getenv(ENV_SECRET) : "");
		return f->r;
	}
	r = make_assertion(a, url, &assertion, err);
	if (r < 0)
		return r;
	form_add(f, "client_assertion_type", ASSERTION_TYPE);
	form_add(f, "client_assertion", assertion);
	return f->r;
}

/* Sends req and parses the answer as a token answer of who. */
static int token_request(const struct azure_http_request *req, const char *who, json_t **ret_doc,
			 struct aad_token_answer *ans, struct azure_error *err)
{
	_cleanup_(transport_response_clear) struct transport_response resp = {0};
	unsigned tries = 0;
	int r;

	r = azure_http_send(req, &resp, &tries, err);
	if (r < 0)
		return r;
	r = aad_parse_token_answer(who, resp.status, resp.body, resp.body_len, ret_doc, ans, err);
	if (r < 0)
		err->tries = tries;
	return r;
}

static int acquire_application(struct aad *a, json_t **ret_doc, struct aad_token_answer *ans,
			       struct azure_error *err)
{
	struct azure_http_request req = {
		.what = "Azure AD", .method = "POST", .content_type = FORM_TYPE,
	};
	_cleanup_free_ char *url = NULL;
	struct form f = {0};
	int r;

	if (asprintf(&url, "%s/%s/oauth2/v2.0/token", a->authority, a->tenant) < 0) {
		url = NULL;
		r = PS_E_NOMEM;
	} else
		r = application_form(a, url, &f, err);
	if (r == 0) {
		req.url = url;
		req.body = f.data;
		req.body_len = f.len;
		r = token_request(&req, "Azure AD", ret_doc, ans, err);
	} else if (r == PS_E_NOMEM)
		azure_error_set(err, AZURE_FAILURE_INTERNAL, "out of memory");
	wipe_free(f.data);
	return r;
}

/* {imds}/metadata/identity/oauth2/token?api-version=...&resource=...[&client_id=...] */
static int imds_url(const struct aad *a, char **ret)
{
	char *res = curl_easy_escape(NULL, a->resource, 0);
	char *id = a->client_id ? curl_easy_escape(NULL, a->client_id, 0) : NULL, *url = NULL;
	int n = -1;

	if (res && (id || !a->client_id))
		n = asprintf(&url, "%s/metadata/identity/oauth2/token?api-version=%s&resource=%s%s%s",
			     a->imds, AAD_IMDS_API_VERSION, res, id ? "&client_id=" : "",
			     id ? id : "");
	curl_free(res);
	curl_free(id);
	if (n < 0)
		return PS_E_NOMEM;
	*ret = url;
	return 0;
}

static int acquire_imds(struct aad *a, json_t **ret_doc, struct aad_token_answer *ans,
			struct azure_error *err)
{
	static const char *const headers[] = {"Metadata: true", NULL};
	struct azure_http_request req = {
		.what = "the managed identity endpoint", .method = "GET", .headers = headers,
	};
	_cleanup_free_ char *url = NULL;

	if (imds_url(a, &url) < 0) {
		azure_error_set(err, AZURE_FAILURE_INTERNAL, "out of memory");
		return PS_E_NOMEM;
	}
	req.url = url;
	return token_request(&req, "managed identity endpoint", ret_doc, ans, err);
}

/* ---- the Azure CLI ---- */

/* Reads the child's output until it closes it, the cap or the deadline
 * (mono_ms()).  Returns 0, PS_E_TOO_LARGE or PS_E_TIMEOUT. */
static int cli_read(int fd, char *buf, size_t cap, size_t *ret_len, int64_t deadline)
{
	struct pollfd p = {.fd = fd, .events = POLLIN};
	size_t len = 0;
	ssize_t n;

	for (;;) {
		int64_t left = deadline - mono_ms();

		if (left <= 0)
			return PS_E_TIMEOUT;
		n = poll(&p, 1, (int)left);
		if (n < 0 && errno != EINTR)
			return PS_E_IO;
		if (n <= 0)
			continue; /* interrupted, or the deadline: checked above */
		n = read(fd, buf + len, cap - len);
		if (n < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (n <= 0)
			break;
		len += (size_t)n;
		if (len == cap)
			return PS_E_TOO_LARGE;
	}
	*ret_len = len;
	return n < 0 ? PS_E_IO : 0;
}

static int cli_spawn(char *const argv[], pid_t *ret_pid, int *ret_fd)
{
	posix_spawn_file_actions_t fa;
	int pipefd[2], rc;

	if (pipe2(pipefd, O_CLOEXEC) < 0)
		return PS_E_IO;
	/* stdin from /dev/null: az must never wait for a prompt's answer;
	 * stderr stays ours, so its messages reach the user as they are. */
	rc = posix_spawn_file_actions_init(&fa);
	if (rc == 0) {
		rc = posix_spawn_file_actions_addopen(&fa, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
		if (rc == 0)
			rc = posix_spawn_file_actions_adddup2(&fa, pipefd[1], STDOUT_FILENO);
		if (rc == 0)
			rc = posix_spawnp(ret_pid, argv[0], &fa, NULL, argv, environ);
		posix_spawn_file_actions_destroy(&fa);
	}
	close(pipefd[1]);
	if (rc != 0) {
		close(pipefd[0]);
		errno = rc;
		return PS_E_IO;
	}
	*ret_fd = pipefd[0];
	return 0;
}

/* Runs argv (found on PATH, no shell) and collects its standard output into
 * locked memory.  Returns 0 with *ret_out, *ret_status (as waitpid() says);
 * or PS_E_IO (cannot start), PS_E_TIMEOUT, PS_E_TOO_LARGE, PS_E_NOMEM. */
static int cli_run(char *const argv[], struct secret **ret_out, int *ret_status)
{
	struct secret *out = secret_new(NULL, AAD_CLI_OUTPUT_MAX);
	int fd = -1, status = 0, r;
	size_t len = 0;
	pid_t pid;

	if (!out)
		return PS_E_NOMEM;
	r = cli_spawn(argv, &pid, &fd);
	if (r < 0) {
		int saved = errno; /* for the message: why it did not start */

		secret_free(out);
		errno = saved;
		return r;
	}
	r = cli_read(fd, out->data, AAD_CLI_OUTPUT_MAX, &len, mono_ms() + AAD_CLI_TIMEOUT_S * 1000);
	close(fd);
	if (r < 0)
		kill(pid, SIGKILL); /* our own child, stuck or flooding */
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	if (r < 0) {
		secret_free(out);
		return r;
	}
	out->data[len] = '\0';
	*ret_out = out;
	*ret_status = status;
	return 0;
}

static int cli_failed(int r, int status, struct azure_error *err)
{
	if (r == PS_E_NOMEM)
		azure_error_set(err, AZURE_FAILURE_INTERNAL, "out of memory");
	else if (r == PS_E_TIMEOUT)
		azure_error_set(err, AZURE_FAILURE_UNAUTHENTICATED,
				"the Azure CLI (az account get-access-token) did not finish "
				"within %d s",
				AAD_CLI_TIMEOUT_S);
	else if (r < 0)
		azure_error_set(err, AZURE_FAILURE_UNAUTHENTICATED,
				"cannot run the Azure CLI (az account get-access-token): %s",
				r == PS_E_TOO_LARGE ? "its output is too large" : strerror(errno));
	else if (WIFEXITED(status))
		azure_error_set(err, AZURE_FAILURE_UNAUTHENTICATED,
				"the Azure CLI (az account get-access-token) failed with exit "
				"status %d; its message, if any, is above (try 'az login')",
				WEXITSTATUS(status));
	else
		azure_error_set(err, AZURE_FAILURE_UNAUTHENTICATED,
				"the Azure CLI (az account get-access-token) was killed by "
				"signal %d",
				WTERMSIG(status));
	return r < 0 ? r : PS_E_UNAUTHORIZED;
}

static int acquire_cli(struct aad *a, json_t **ret_doc, struct aad_token_answer *ans,
		       struct azure_error *err)
{
	char *argv[] = {"az", "account", "get-access-token", "--output", "json",
			"--resource", a->resource, NULL};
	struct secret *out = NULL;
	int status = 0, r;

	r = cli_run(argv, &out, &status);
	if (r < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		secret_free(out);
		return cli_failed(r, status, err);
	}
	r = aad_parse_cli_output(out->data, strlen(out->data), time(NULL), ret_doc, ans);
	secret_free(out);
	if (r < 0)
		azure_error_set(err, AZURE_FAILURE_MALFORMED,
				"the Azure CLI printed no usable accessToken and expiresOn");
	return r;
}

/* ---- the token, kept fresh ---- */

/* Keeps ans's token, to be fetched again before it expires: five minutes
 * before, or half-way through a shorter lifetime. */
static int keep(struct aad *a, const struct aad_token_answer *ans, struct azure_error *err)
{
	struct secret *t = secret_new(ans->access_token, ans->len);
	/* A year is plenty; more would only risk overflow below. */
	int64_t life = ans->expires_in < AAD_LIFETIME_MAX_S ? ans->expires_in : AAD_LIFETIME_MAX_S;
	int64_t life_ms = (life > -AAD_LIFETIME_MAX_S ? life : 0) * 1000, margin_ms = life_ms / 2;

	if (!t) {
		azure_error_set(err, AZURE_FAILURE_INTERNAL, "out of memory");
		return PS_E_NOMEM;
	}
	if (margin_ms > AAD_REFRESH_MARGIN_S * 1000)
		margin_ms = AAD_REFRESH_MARGIN_S * 1000;
	secret_free(a->token);
	a->token = t;
	a->refresh_at = mono_ms() + life_ms - margin_ms;
	return 0;
}

static int token_file_failed(const struct aad *a, int r, struct azure_error *err)
{
	const char *why = r == PS_E_NOT_FOUND	    ? "no such file"
			  : r == PS_E_PERMISSIONS   ? "group or others may access it, or it "
						      "cannot be read (chmod 600)"
			  : r == PS_E_TOO_LARGE	    ? "too large for an access token"
			  : r == PS_E_INVALID_REQUEST ? "not a regular file holding one access token"
						      : ps_strerror(r);

	azure_error_set(err, r == PS_E_NOMEM ? AZURE_FAILURE_INTERNAL : AZURE_FAILURE_UNAUTHENTICATED,
			"cannot use the access token file %s: %s", a->token_file, why);
	return r;
}

static int acquire(struct aad *a, json_t **ret_doc, struct aad_token_answer *ans,
		   struct azure_error *err)
{
	switch (a->source) {
	case AAD_SOURCE_CLIENT_SECRET:
	case AAD_SOURCE_CLIENT_CERTIFICATE:
		return acquire_application(a, ret_doc, ans, err);
	case AAD_SOURCE_MANAGED_IDENTITY:
		return acquire_imds(a, ret_doc, ans, err);
	case AAD_SOURCE_AZURE_CLI:
		return acquire_cli(a, ret_doc, ans, err);
	case AAD_SOURCE_TOKEN_FILE:
		break;
	}
	azure_error_set(err, AZURE_FAILURE_INTERNAL, "no way to fetch a token");
	return PS_E_INTERNAL;
}

int aad_token(struct aad *a, const struct secret **ret, struct azure_error *err)
{
	_cleanup_json_ json_t *doc = NULL;
	struct aad_token_answer ans = {0};
	int r;

	if (a->token && (a->source == AAD_SOURCE_TOKEN_FILE || mono_ms() < a->refresh_at)) {
		*ret = a->token;
		return 0;
	}
	if (a->source == AAD_SOURCE_TOKEN_FILE) {
		r = aad_read_token_file(a->token_file, &a->token);
		if (r < 0)
			return token_file_failed(a, r, err);
		*ret = a->token;
		return 0;
	}
	r = acquire(a, &doc, &ans, err);
	if (r == 0)
		r = keep(a, &ans, err);
	if (r == 0)
		*ret = a->token;
	return r;
}
