/* The Azure half of the client: every response body recorded from the real
 * services (../shared/azure/recordings, read at run time) through the ARM
 * answer parser; HTTP dates; the retry policy; endpoint URLs; paths; error
 * answers of ARM, Azure AD and the metadata endpoint; the credential chain;
 * token files; the JWT client assertion; and the ARM operations and retries
 * against a fake server on a loopback socket. */
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <libgen.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "testdir.h"
#include "aad.h"
#include "arm.h"
#include "azure_error.h"
#include "azure_http.h"
#include "error.h"
#include "exit_code.h"
#include "httpdate.h"
#include "jwt.h"
#include "retry.h"
#include "transport.h"
#include "check_run.h"

#define YEAR_0001 (-62135596800LL)

/* ---- files and directories ---- */

static char *path_in(const char *dir, const char *name)
{
	char *p = NULL;

	ck_assert_int_gt(asprintf(&p, "%s/%s", dir, name), 0);
	return p;
}

static void write_file(const char *path, const char *text, mode_t mode)
{
	FILE *f = fopen(path, "w");

	ck_assert_ptr_nonnull(f);
	fputs(text, f);
	fclose(f);
	ck_assert_int_eq(chmod(path, mode), 0);
}

/* The whole file, NUL-terminated (free()). */
static char *slurp(const char *path, size_t *ret_len)
{
	FILE *f = fopen(path, "rb");
	char *buf;
	long n;

	ck_assert_msg(f != NULL, "cannot open %s: %s", path, strerror(errno));
	fseek(f, 0, SEEK_END);
	n = ftell(f);
	fseek(f, 0, SEEK_SET);
	buf = malloc((size_t)n + 1);
	ck_assert_int_eq(fread(buf, 1, (size_t)n, f), (size_t)n);
	buf[n] = '\0';
	fclose(f);
	if (ret_len)
		*ret_len = (size_t)n;
	return buf;
}

/* <source root>/../shared/azure/recordings: the source root is where
 * meson's MAKE_TOKEN (<root>/tests/make-token.sh) lives. */
static char *recordings_dir(void)
{
	const char *mt = getenv("MAKE_TOKEN");
	char *copy, *root, *dir = NULL;

	ck_assert_msg(mt != NULL, "MAKE_TOKEN is not set: run through meson test");
	copy = strdup(mt);
	root = dirname(dirname(copy));
	ck_assert_int_gt(asprintf(&dir, "%s/../shared/azure/recordings", root), 0);
	free(copy);
	return dir;
}

/* ---- the recordings ---- */

struct recorded {
	char method[16];
	char uri[2048];
	long status;
	char *body; /* free() */
	size_t len;
};

/* What a recorded exchange must parse as. */
static enum arm_answer_kind expected_kind(const struct recorded *r)
{
	char path[2048];
	char *q;

	snprintf(path, sizeof(path), "%s", r->uri);
	q = strchr(path, '?');
	if (q)
		*q = '\0';
	if (r->status >= 400)
		return ARM_ANSWER_ERROR;
	if (strcmp(r->method, "DELETE") == 0 || r->len == 0)
		return ARM_ANSWER_EMPTY;
	if (strlen(path) > 13 && strcmp(path + strlen(path) - 13, "/certificates") == 0)
		return ARM_ANSWER_LIST;
	if (strstr(path, "/certificates/"))
		return ARM_ANSWER_CERTIFICATE;
	return ARM_ANSWER_RESOURCE;
}

/* What the recordings add up to, checked at the end. */
struct tally {
	unsigned exchanges, certificates, lists, errors, empty, resources;
	unsigned codes, year_0001, null_certificate, code_first, numeric_codes;
	unsigned subjects_without_cn;
};

static const char *const known_thumbprints[] = {
	"9F0983E8F2DB2DB3582997FEF331247D872DEE32", "D0529BF2D7CAF23CC15506B2A7F0F08F27A428A0",
	"4BB1D5D0C511EFD5D2E23382233DF2833475DF9C", "D9B01852EF0AC392B3FEE023CBCF43F9D3311047",
};

static void check_certificate(const struct arm_certificate *c, struct tally *t)
{
	bool known = false;
	int64_t when;

	for (size_t i = 0; i < sizeof(known_thumbprints) / sizeof(known_thumbprints[0]); i++)
		known |= strcmp(c->thumbprint, known_thumbprints[i]) == 0;
	ck_assert_msg(known, "unknown thumbprint %s", c->thumbprint);
	ck_assert(arm_etag_valid(c->etag));
	ck_assert_int_eq(httpdate_parse(c->expiry_text, &when), 0);
	ck_assert(when == c->expiry);
	ck_assert(c->created_text && c->has_created && c->updated_text && c->has_updated);
	t->year_0001 += c->created == YEAR_0001;
	t->null_certificate += c->certificate == NULL;
	t->subjects_without_cn += strncmp(c->subject, "CN=", 3) != 0;
	if (strcmp(c->expiry_text, "Sun, 03 Dec 2017 21:02:47 GMT") == 0)
		ck_assert(c->expiry == 1512334967LL);
}

/* verificationCode is the first member of properties, as recorded. */
static void check_code_answer(const struct arm_certificate *c, struct tally *t)
{
	json_t *p = json_object_get(c->doc, "properties");

	ck_assert_ptr_nonnull(c->verification_code);
	ck_assert_uint_eq(strlen(c->verification_code), 48);
	ck_assert_uint_eq(strspn(c->verification_code, "0123456789ABCDEF"), 48);
	ck_assert_str_eq(json_object_iter_key(json_object_iter(p)), "verificationCode");
	t->codes++;
	t->code_first++;
}

static void check_answer(const struct recorded *r, struct tally *t)
{
	enum arm_answer_kind want = expected_kind(r);
	struct arm_answer a;
	int rc = arm_answer_parse(r->status, r->body, r->len, &a);

	ck_assert_msg(rc == 0, "%s %s (%ld): not parsed: %.200s", r->method, r->uri, r->status,
		      r->body);
	ck_assert_msg(a.kind == want, "%s %s (%ld): kind %d, not %d", r->method, r->uri, r->status,
		      a.kind, want);
	t->exchanges++;
	if (a.kind == ARM_ANSWER_CERTIFICATE) {
		check_certificate(a.certificate, t);
		if (strstr(r->uri, "/generateVerificationCode"))
			check_code_answer(a.certificate, t);
		else
			ck_assert_ptr_null(a.certificate->verification_code);
		t->certificates++;
	} else if (a.kind == ARM_ANSWER_LIST) {
		for (size_t i = 0; i < a.list->n; i++)
			check_certificate(&a.list->items[i], t);
		t->lists++;
	} else if (a.kind == ARM_ANSWER_ERROR) {
		ck_assert_int_eq(a.error.status, r->status);
		ck_assert_str_eq(a.error.code, "404015");
		ck_assert_int_eq(a.error.failure, AZURE_FAILURE_REFUSED);
		ck_assert(strncmp(a.error.message, "Certificate '", 13) == 0);
		ck_assert_ptr_nonnull(strstr(a.error.message, "errorcode: IH404015."));
		ck_assert(arm_error_certificate_missing(&a.error));
		t->numeric_codes++;
		t->errors++;
	} else if (a.kind == ARM_ANSWER_EMPTY)
		t->empty++;
	else
		t->resources++;
	arm_answer_clear(&a);
}

/* .NET recordings: {"Entries": [{"RequestMethod", "RequestUri", "StatusCode",
 * "ResponseBody": a string (track 1) or parsed JSON (track 2)}]}. */
static unsigned check_dotnet(const char *path, struct tally *t)
{
	json_error_t jerr;
	json_t *doc = json_load_file(path, 0, &jerr), *e;
	size_t i;

	ck_assert_msg(doc != NULL, "%s: %s", path, jerr.text);
	json_array_foreach(json_object_get(doc, "Entries"), i, e) {
		json_t *body = json_object_get(e, "ResponseBody");
		struct recorded r = {.status = (long)json_integer_value(json_object_get(e, "StatusCode"))};

		snprintf(r.method, sizeof(r.method), "%s",
			 json_string_value(json_object_get(e, "RequestMethod")));
		snprintf(r.uri, sizeof(r.uri), "%s", json_string_value(json_object_get(e, "RequestUri")));
		if (json_is_string(body))
			r.body = strdup(json_string_value(body));
		else if (json_is_null(body) || !body)
			r.body = strdup("");
		else
			r.body = json_dumps(body, JSON_COMPACT | JSON_PRESERVE_ORDER);
		ck_assert_ptr_nonnull(r.body);
		r.len = strlen(r.body);
		check_answer(&r, t);
		free(r.body);
	}
	json_decref(doc);
	return (unsigned)i;
}

/* ---- a purpose-built reader of the azure-cli (vcrpy) YAML cassettes ----
 *
 * Per interaction it needs the request's "method:" and "uri:" lines and the
 * response's "body:" / "string: '...'" and "status:" / "code: N".  The body
 * is a YAML single-quoted scalar: '' stands for ', and a line break with the
 * next line's indentation folds into one space (an empty line into "\n"). */

/* Reads the single-quoted scalar starting at the quote *p; returns the text
 * (free()) and moves *p past the closing quote. */
static char *yaml_single_quoted(const char **p)
{
	const char *s = *p + 1;
	size_t cap = strlen(s) + 1, n = 0;
	char *out = malloc(cap);

	ck_assert_ptr_nonnull(out);
	for (;;) {
		ck_assert_msg(*s != '\0', "unterminated single-quoted scalar");
		if (s[0] == '\'' && s[1] == '\'') {
			out[n++] = '\'';
			s += 2;
		} else if (s[0] == '\'') {
			s++;
			break;
		} else if (s[0] == '\n') {
			unsigned breaks = 0;

			while (n > 0 && (out[n - 1] == ' ' || out[n - 1] == '\t'))
				n--;
			/* This break, then any empty lines after it. */
			while (*s == '\n' || *s == ' ' || *s == '\t')
				breaks += *s++ == '\n';
			if (breaks == 1)
				out[n++] = ' ';
			for (unsigned i = 1; i < breaks; i++)
				out[n++] = '\n';
		} else
			out[n++] = *s++;
	}
	out[n] = '\0';
	*p = s;
	return out;
}

/* The rest of the line after prefix at *p, copied into buf. */
static void line_value(const char *at, size_t skip, char *buf, size_t n)
{
	const char *end = strchr(at + skip, '\n');
	size_t len = end ? (size_t)(end - at - skip) : strlen(at + skip);

	snprintf(buf, n, "%.*s", (int)len, at + skip);
}

static unsigned check_cassette(const char *path, struct tally *t)
{
	char *text = slurp(path, NULL);
	const char *p = text;
	unsigned n = 0;

	while ((p = strstr(p, "\n- request:\n"))) {
		const char *next = strstr(p + 1, "\n- request:\n");
		const char *m = strstr(p, "\n    method: "), *u = strstr(p, "\n    uri: ");
		const char *b = strstr(p, "\n    body:\n      string: ");
		const char *c = strstr(p, "\n    status:\n      code: ");
		struct recorded r = {0};
		char code[16];

		ck_assert(m && u && b && c && (!next || (m < next && u < next && b < next && c < next)));
		line_value(m, strlen("\n    method: "), r.method, sizeof(r.method));
		line_value(u, strlen("\n    uri: "), r.uri, sizeof(r.uri));
		line_value(c, strlen("\n    status:\n      code: "), code, sizeof(code));
		r.status = strtol(code, NULL, 10);
		b += strlen("\n    body:\n      string: ");
		ck_assert_msg(*b == '\'', "%s: a response body that is not single-quoted", path);
		r.body = yaml_single_quoted(&b);
		r.len = strlen(r.body);
		check_answer(&r, t);
		free(r.body);
		n++;
		p = b;
	}
	free(text);
	return n;
}

START_TEST(every_recorded_body_parses)
{
	static const struct {
		const char *file;
		unsigned exchanges;
	} files[] = {
		{"net-track1-dps/DeviceProvisioningClientCertificates/CreateAndDelete.json", 10},
		{"net-track1-iothub/IotHubLifeCycleTests/TestIotHubCertificateLifeCycle.json", 15},
		{"net-track2-dps/DpsCertificateTests/DpsCertificateOperations.json", 15},
		{"net-track2-iothub/CertificateDescriptionTests/Delete.json", 18},
		{"azure-cli/test_dps_certificate_lifecycle.yaml", 19},
		{"azure-cli/test_certificate_lifecycle.yaml", 15},
	};
	char *dir = recordings_dir();
	struct tally t = {0};

	for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
		char *path = path_in(dir, files[i].file);
		unsigned n = strstr(path, ".yaml") ? check_cassette(path, &t) : check_dotnet(path, &t);

		ck_assert_msg(n == files[i].exchanges, "%s: %u exchanges, not %u", files[i].file, n,
			      files[i].exchanges);
		free(path);
	}
	free(dir);
	ck_assert_uint_eq(t.exchanges, 92);
	/* Each quirk the issue names was met at least once. */
	ck_assert_uint_gt(t.certificates, 10);
	ck_assert_uint_gt(t.lists, 5);
	ck_assert_uint_eq(t.errors, 2);
	ck_assert_uint_eq(t.numeric_codes, 2);
	ck_assert_uint_eq(t.codes, 4);
	ck_assert_uint_eq(t.code_first, 4);
	ck_assert_uint_gt(t.year_0001, 0);
	ck_assert_uint_gt(t.null_certificate, 0);
	ck_assert_uint_gt(t.subjects_without_cn, 0);
	ck_assert_uint_gt(t.empty, 3);
	ck_assert_uint_gt(t.resources, 10);
}
END_TEST

START_TEST(yaml_scalar_folding)
{
	const char *src = "'a ''b''\n      c\n\n      d'' e' tail";
	const char *p = src;
	char *s = yaml_single_quoted(&p);

	ck_assert_str_eq(s, "a 'b' c\nd' e");
	ck_assert_str_eq(p, " tail");
	free(s);
}
END_TEST

/* ---- HTTP dates ---- */

START_TEST(httpdate_good_and_bad)
{
	static const char *const bad[] = {
		"",
		"Sun, 03 Dec 2017 21:02:47",
		"Sun, 03 Dec 2017 21:02:47 UTC",
		"Sun, 3 Dec 2017 21:02:47 GMT",
		"Sunday, 03 Dec 2017 21:02:47 GMT",
		"Xyz, 03 Dec 2017 21:02:47 GMT",
		"Sun, 03 Dez 2017 21:02:47 GMT",
		"Sun, 30 Feb 2016 21:02:47 GMT",
		"Sun, 29 Feb 2017 21:02:47 GMT",
		"Sun, 03 Dec 2017 24:02:47 GMT",
		"Sun, 03 Dec 2017 21:60:47 GMT",
		"Sun, 03 Dec 0000 21:02:47 GMT",
		"Sun, 03 Dec 2017 21:02:47 GMT ",
		"Sun, 03 Dec 2017T21:02:47 GMT",
		"2017-12-03T21:02:47Z",
	};
	char out[HTTPDATE_RFC3339_LEN];
	int64_t t = 42;

	ck_assert_int_eq(httpdate_parse("Sun, 03 Dec 2017 21:02:47 GMT", &t), 0);
	ck_assert(t == 1512334967LL);
	ck_assert_int_eq(httpdate_parse("Thu, 01 Jan 1970 00:00:00 GMT", &t), 0);
	ck_assert(t == 0);
	ck_assert_int_eq(httpdate_parse("Mon, 01 Jan 0001 00:00:00 GMT", &t), 0);
	ck_assert(t == YEAR_0001);
	ck_assert_int_eq(httpdate_parse("Thu, 29 Feb 2024 12:00:00 GMT", &t), 0);
	ck_assert(t == 1709208000LL);
	ck_assert_int_eq(httpdate_parse("Fri, 31 Dec 9999 23:59:59 GMT", &t), 0);
	ck_assert(t == 253402300799LL);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		t = 42;
		ck_assert_msg(httpdate_parse(bad[i], &t) == PS_E_INVALID_REQUEST, "%s", bad[i]);
		ck_assert(t == 42);
	}
	ck_assert_int_eq(httpdate_parse(NULL, &t), PS_E_INVALID_REQUEST);
	httpdate_format_rfc3339(YEAR_0001, out);
	ck_assert_str_eq(out, "0001-01-01T00:00:00Z");
	httpdate_format_rfc3339(1512334967LL, out);
	ck_assert_str_eq(out, "2017-12-03T21:02:47Z");
	httpdate_format_rfc3339(-1, out);
	ck_assert_str_eq(out, "1969-12-31T23:59:59Z");
	httpdate_format_rfc3339(INT64_MIN, out);
	ck_assert_str_eq(out, "0001-01-01T00:00:00Z");
}
END_TEST

/* ---- the retry policy ---- */

START_TEST(retry_policy)
{
	int64_t ms = -5;

	ck_assert(retry_status(429) && retry_status(500) && retry_status(503) && retry_status(408));
	ck_assert(!retry_status(400) && !retry_status(401) && !retry_status(412) &&
		  !retry_status(404) && !retry_status(200) && !retry_status(600));
	ck_assert(retry_transfer_error(PS_E_IO) && retry_transfer_error(PS_E_TIMEOUT));
	ck_assert(!retry_transfer_error(PS_E_TOO_LARGE) && !retry_transfer_error(PS_E_NOMEM) &&
		  !retry_transfer_error(PS_E_INVALID_REQUEST));

	/* Exponential back-off: 1 s, then 2 s; no fourth try. */
	ck_assert_int_eq(retry_next_delay(1, 0, -1, &ms), 0);
	ck_assert(ms == 1000);
	ck_assert_int_eq(retry_next_delay(2, 1000, -1, &ms), 0);
	ck_assert(ms == 2000);
	ms = -5;
	ck_assert_int_eq(retry_next_delay(3, 3000, -1, &ms), PS_E_TIMEOUT);
	ck_assert_int_eq(retry_next_delay(0, 0, -1, &ms), PS_E_TIMEOUT);
	ck_assert(ms == -5);
	/* Retry-After wins, whether shorter or longer... */
	ck_assert_int_eq(retry_next_delay(1, 0, 0, &ms), 0);
	ck_assert(ms == 0);
	ck_assert_int_eq(retry_next_delay(1, 0, 30000, &ms), 0);
	ck_assert(ms == 30000);
	/* ...but never past the 60 s budget. */
	ck_assert_int_eq(retry_next_delay(1, 0, 61000, &ms), PS_E_TIMEOUT);
	ck_assert_int_eq(retry_next_delay(2, 59500, -1, &ms), PS_E_TIMEOUT);
	ck_assert_int_eq(retry_next_delay(1, 59000, -1, &ms), 0);
}
END_TEST

START_TEST(retry_after_values)
{
	int64_t now = 1512334967LL, ms = -5;

	ck_assert_int_eq(retry_after_parse("1", now, &ms), 0);
	ck_assert(ms == 1000);
	ck_assert_int_eq(retry_after_parse("0", now, &ms), 0);
	ck_assert(ms == 0);
	ck_assert_int_eq(retry_after_parse("120", now, &ms), 0);
	ck_assert(ms == 120000);
	ck_assert_int_eq(retry_after_parse("Sun, 03 Dec 2017 21:02:57 GMT", now, &ms), 0);
	ck_assert(ms == 10000);
	ck_assert_int_eq(retry_after_parse("Sun, 03 Dec 2017 21:00:00 GMT", now, &ms), 0);
	ck_assert(ms == 0);
	ms = -5;
	ck_assert_int_eq(retry_after_parse("-1", now, &ms), PS_E_INVALID_REQUEST);
	ck_assert_int_eq(retry_after_parse("1.5", now, &ms), PS_E_INVALID_REQUEST);
	ck_assert_int_eq(retry_after_parse("soon", now, &ms), PS_E_INVALID_REQUEST);
	ck_assert_int_eq(retry_after_parse("", now, &ms), PS_E_INVALID_REQUEST);
	ck_assert_int_eq(retry_after_parse(NULL, now, &ms), PS_E_INVALID_REQUEST);
	ck_assert_int_eq(retry_after_parse("99999999999999999999", now, &ms), PS_E_INVALID_REQUEST);
	ck_assert(ms == -5);
}
END_TEST

/* ---- endpoints, paths, names ---- */

START_TEST(endpoint_urls)
{
	static const char *const good[][2] = {
		{"https://management.azure.com", "https://management.azure.com"},
		{"https://management.azure.com/", "https://management.azure.com"},
		{"https://mgmt.example:8443", "https://mgmt.example:8443"},
		{"http://127.0.0.1:8080", "http://127.0.0.1:8080"},
		{"http://127.3.4.5", "http://127.3.4.5"},
		{"http://localhost:1", "http://localhost:1"},
		{"http://[::1]:9/", "http://[::1]:9"},
	};
	static const char *const bad[] = {
		"http://management.azure.com", "http://10.0.0.1", "http://128.0.0.1",
		"http://127.0.0.1.nip.io", "http://[::2]", "http://0.0.0.0",
		"ftp://127.0.0.1", "https://user:pw@host", "https://host/path",
		"https://host/?a=b", "https://host/#frag", "management.azure.com", "", "https://",
	};
	const char *why = NULL;
	char *origin = NULL;

	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		ck_assert_msg(azure_url_check(good[i][0], AZURE_URL_HTTPS, &origin, &why) == 0, "%s",
			      good[i][0]);
		ck_assert_str_eq(origin, good[i][1]);
		free(origin);
	}
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		origin = NULL;
		why = NULL;
		ck_assert_msg(azure_url_check(bad[i], AZURE_URL_HTTPS, &origin, &why) ==
				      PS_E_INVALID_REQUEST,
			      "%s", bad[i]);
		ck_assert_ptr_null(origin);
		ck_assert_ptr_nonnull(why);
	}
	ck_assert_int_eq(azure_url_check("http://10.0.0.1", AZURE_URL_HTTPS, &origin, &why),
			 PS_E_INVALID_REQUEST);
	ck_assert_ptr_nonnull(strstr(why, "loopback"));
	/* The metadata endpoint is plain http:// by design. */
	ck_assert_int_eq(azure_url_check("http://169.254.169.254", AZURE_URL_ANY_HTTP, &origin, &why), 0);
	ck_assert_str_eq(origin, "http://169.254.169.254");
	free(origin);
	ck_assert(azure_host_is_loopback("LOCALHOST") && azure_host_is_loopback("127.255.255.254"));
	ck_assert(!azure_host_is_loopback("127.1") && !azure_host_is_loopback("::1"));
}
END_TEST

START_TEST(endpoint_resources)
{
	char *origin = NULL, *resource = NULL;
	const char *why = NULL;

	ck_assert_int_eq(arm_endpoint_resolve("https://management.azure.com/", &origin, &resource, &why), 0);
	ck_assert_str_eq(resource, "https://management.azure.com");
	free(origin);
	free(resource);
	ck_assert_int_eq(arm_endpoint_resolve("http://127.0.0.1:5000", &origin, &resource, &why), 0);
	ck_assert_str_eq(origin, "http://127.0.0.1:5000");
	ck_assert_str_eq(resource, "https://management.azure.com");
	free(origin);
	free(resource);
	ck_assert_int_eq(arm_endpoint_resolve("https://management.usgovcloudapi.net", &origin,
					      &resource, &why),
			 0);
	ck_assert_str_eq(resource, "https://management.usgovcloudapi.net");
	free(origin);
	free(resource);
	origin = resource = NULL;
	ck_assert_int_eq(arm_endpoint_resolve("http://example.com", &origin, &resource, &why),
			 PS_E_INVALID_REQUEST);
	ck_assert_ptr_null(origin);
	ck_assert_ptr_null(resource);
}
END_TEST

START_TEST(paths_and_names)
{
	struct arm_target t = {
		.service = ARM_SERVICE_DPS, .subscription = "sub-1", .resource_group = "my rg (test)",
		.name = "dps1",
	};
	char long_name[300];
	const char *why = NULL;
	char *path = NULL;

	ck_assert_int_eq(arm_target_check(&t, "cert.one_2-x", &why), 0);
	ck_assert_int_eq(arm_certificate_path(&t, "cert.one_2-x", &path), 0);
	ck_assert_str_eq(path, "/subscriptions/sub-1/resourceGroups/my%20rg%20%28test%29/providers/"
			       "Microsoft.Devices/provisioningServices/dps1/certificates/cert.one_2-x");
	free(path);
	t.service = ARM_SERVICE_IOTHUB;
	ck_assert_int_eq(arm_certificate_path(&t, NULL, &path), 0);
	ck_assert_str_eq(path, "/subscriptions/sub-1/resourceGroups/my%20rg%20%28test%29/providers/"
			       "Microsoft.Devices/IotHubs/dps1/certificates");
	free(path);

	memset(long_name, 'a', 65);
	long_name[65] = '\0';
	ck_assert_int_eq(arm_target_check(&t, long_name, &why), PS_E_INVALID_REQUEST);
	ck_assert_ptr_nonnull(strstr(why, "--certificate-name"));
	t.service = ARM_SERVICE_DPS;
	ck_assert_int_eq(arm_target_check(&t, long_name, &why), 0);
	memset(long_name, 'a', 257);
	long_name[257] = '\0';
	ck_assert_int_eq(arm_target_check(&t, long_name, &why), PS_E_INVALID_REQUEST);
	ck_assert_int_eq(arm_target_check(&t, "a/b", &why), PS_E_INVALID_REQUEST);
	ck_assert_int_eq(arm_target_check(&t, "a b", &why), PS_E_INVALID_REQUEST);
	t.api_version = "2022-12-12&x=y";
	ck_assert_int_eq(arm_target_check(&t, "c", &why), PS_E_INVALID_REQUEST);
	ck_assert_ptr_nonnull(strstr(why, "--api-version"));
	t.api_version = NULL;
	t.resource_group = "..";
	ck_assert_int_eq(arm_target_check(&t, "c", &why), PS_E_INVALID_REQUEST);
	t.resource_group = "rg/other";
	ck_assert_int_eq(arm_target_check(&t, "c", &why), PS_E_INVALID_REQUEST);
	t.resource_group = "rg";
	t.subscription = "sub\n1";
	ck_assert_int_eq(arm_target_check(&t, "c", &why), PS_E_INVALID_REQUEST);
	ck_assert_ptr_nonnull(strstr(why, "--subscription"));
	t.subscription = NULL;
	ck_assert_int_eq(arm_target_check(&t, "c", &why), PS_E_INVALID_REQUEST);

	ck_assert(arm_etag_valid("AAAAAAeHgZI="));
	ck_assert(arm_etag_valid("\"b100ce7c-0000-0100-0000-63e9f5510000\""));
	ck_assert(!arm_etag_valid("") && !arm_etag_valid(NULL) && !arm_etag_valid("a b") &&
		  !arm_etag_valid("a\r\nX-Evil: 1") && !arm_etag_valid("caf\xc3\xa9"));
	memset(long_name, 'e', 257);
	long_name[257] = '\0';
	ck_assert(!arm_etag_valid(long_name));
	long_name[256] = '\0';
	ck_assert(arm_etag_valid(long_name));
}
END_TEST

/* ---- certificate descriptions and errors ---- */

#define CERT_JSON(extra_props, extra_top)                                                       \
	"{\"properties\": {\"subject\": \"Dev CA\", \"expiry\": \"Sun, 03 Dec 2017 21:02:47 GMT\", " \
	"\"thumbprint\": \"9F0983E8F2DB2DB3582997FEF331247D872DEE32\", \"isVerified\": false" extra_props \
	"}, \"name\": \"c1\", \"etag\": \"AAAAAAeHgZI=\"" extra_top "}"

START_TEST(certificate_shapes)
{
	static const char *const bad[] = {
		"[]",
		"{\"properties\": {}}",
		CERT_JSON(", \"certificate\": 7", ""),
		CERT_JSON(", \"verificationCode\": 1", ""),
		CERT_JSON(", \"created\": false", ""),
		CERT_JSON("", ", \"id\": 5"),
		"{\"properties\": {\"subject\": \"x\", \"expiry\": \"Sun, 03 Dec 2017 21:02:47 GMT\", "
		"\"thumbprint\": \"9F0983E8F2DB2DB3582997FEF331247D872DEE32\", \"isVerified\": \"false\"}, "
		"\"name\": \"c1\", \"etag\": \"e\"}",
		"{\"properties\": {\"subject\": \"x\", \"expiry\": \"2017-12-03\", "
		"\"thumbprint\": \"9F0983E8F2DB2DB3582997FEF331247D872DEE32\", \"isVerified\": true}, "
		"\"name\": \"c1\", \"etag\": \"e\"}",
		"{\"properties\": {\"subject\": \"x\", \"expiry\": \"Sun, 03 Dec 2017 21:02:47 GMT\", "
		"\"thumbprint\": \"9F0983E8F2DB2DB3582997FEF331247D872DEE3\", \"isVerified\": true}, "
		"\"name\": \"c1\", \"etag\": \"e\"}",
		"{\"properties\": {\"subject\": \"x\", \"expiry\": \"Sun, 03 Dec 2017 21:02:47 GMT\", "
		"\"thumbprint\": \"9F0983E8F2DB2DB3582997FEF331247D872DEE32\", \"isVerified\": true}, "
		"\"name\": \"c1\", \"etag\": \"bad etag\"}",
		"{\"properties\": {\"subject\": \"x\", \"expiry\": \"Sun, 03 Dec 2017 21:02:47 GMT\", "
		"\"thumbprint\": \"9F0983E8F2DB2DB3582997FEF331247D872DEE32\", \"isVerified\": true}, "
		"\"name\": \"c1\"}",
		CERT_JSON("", ", \"name\": \"twice\""),
	};
	const char *ok = CERT_JSON(", \"certificate\": null, \"created\": \"Mon, 01 Jan 0001 00:00:00 GMT\"",
				   ", \"id\": \"/x\"");
	struct arm_certificate *c = NULL;
	struct arm_certificate_list *l = NULL;
	char *list;

	ck_assert_int_eq(arm_certificate_from_body(ok, strlen(ok), &c), 0);
	ck_assert_str_eq(c->subject, "Dev CA");
	ck_assert_ptr_null(c->certificate);
	ck_assert_ptr_null(c->type);
	ck_assert_str_eq(c->id, "/x");
	ck_assert(c->has_created && c->created == YEAR_0001 && !c->has_updated);
	ck_assert(!c->is_verified);
	arm_certificate_free(c);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		c = NULL;
		ck_assert_msg(arm_certificate_from_body(bad[i], strlen(bad[i]), &c) ==
				      PS_E_INVALID_REQUEST,
			      "%s", bad[i]);
		ck_assert_ptr_null(c);
	}
	ck_assert_int_gt(asprintf(&list, "{\"value\": [%s, %s]}", ok, ok), 0);
	ck_assert_int_eq(arm_certificate_list_from_body(list, strlen(list), &l), 0);
	ck_assert_uint_eq(l->n, 2);
	ck_assert_str_eq(l->items[1].name, "c1");
	arm_certificate_list_free(l);
	free(list);
	ck_assert_int_eq(arm_certificate_list_from_body("{\"value\": [{}]}", 15, &l),
			 PS_E_INVALID_REQUEST);
	ck_assert_int_eq(arm_certificate_list_from_body("{\"value\": {}}", 13, &l),
			 PS_E_INVALID_REQUEST);
	ck_assert_int_eq(arm_certificate_list_from_body("{\"value\": []}", 13, &l), 0);
	ck_assert_uint_eq(l->n, 0);
	arm_certificate_list_free(l);
}
END_TEST

START_TEST(answer_kinds)
{
	struct arm_answer a;

	ck_assert_int_eq(arm_answer_parse(200, "", 0, &a), 0);
	ck_assert_int_eq(a.kind, ARM_ANSWER_EMPTY);
	ck_assert_int_eq(arm_answer_parse(204, " null\r\n", 7, &a), 0);
	ck_assert_int_eq(a.kind, ARM_ANSWER_EMPTY);
	ck_assert_int_eq(arm_answer_parse(200, "{\"status\": \"Running\"}", 21, &a), 0);
	ck_assert_int_eq(a.kind, ARM_ANSWER_RESOURCE);
	ck_assert_int_eq(arm_answer_parse(200, "<html>", 6, &a), PS_E_INVALID_REQUEST);
	ck_assert_int_eq(arm_answer_parse(200, "[1]", 3, &a), PS_E_INVALID_REQUEST);
	ck_assert_int_eq(arm_answer_parse(200, "{\"properties\": {\"thumbprint\": 1}}", 33, &a),
			 PS_E_INVALID_REQUEST);
	ck_assert_int_eq(arm_answer_parse(502, "<html>bad gateway</html>", 24, &a), 0);
	ck_assert_int_eq(a.kind, ARM_ANSWER_ERROR);
	ck_assert_int_eq(a.error.failure, AZURE_FAILURE_UNREACHABLE);
	ck_assert_ptr_nonnull(strstr(a.error.message, "<html>bad gateway</html>"));
	arm_answer_clear(&a);
}
END_TEST

START_TEST(error_shapes)
{
	static const char iot[] = "{\"code\":412001,\"httpStatusCode\":\"PreconditionFailed\","
				  "\"message\":\"Invalid ETag supplied. errorcode: IH412001.\"}";
	static const char iot_string[] = "{\"code\":\"400053\",\"message\":\"Proof-Of-Possession failed\"}";
	static const char envelope[] = "{\"error\":{\"code\":\"ResourceNotFound\",\"message\":"
				       "\"The Resource 'Microsoft.Devices/provisioningServices/x' was not found.\"}}";
	static const char auth[] = "{\"error\":{\"code\":\"InvalidAuthenticationToken\",\"message\":"
				   "\"The access token is invalid.\"}}";
	struct azure_error e;

	ck_assert_int_eq(arm_error_from_answer(412, iot, strlen(iot), &e), 0);
	ck_assert_str_eq(e.code, "412001");
	ck_assert_str_eq(e.message, "Invalid ETag supplied. errorcode: IH412001.");
	ck_assert_int_eq(e.failure, AZURE_FAILURE_REFUSED);
	ck_assert_int_eq(exit_code_for_azure_error(&e), PS_EXIT_AZURE_REFUSED);
	ck_assert(!arm_error_certificate_missing(&e));

	ck_assert_int_eq(arm_error_from_answer(400, iot_string, strlen(iot_string), &e), 0);
	ck_assert_str_eq(e.code, "400053");

	ck_assert_int_eq(arm_error_from_answer(404, envelope, strlen(envelope), &e), 0);
	ck_assert_str_eq(e.code, "ResourceNotFound");
	ck_assert_int_eq(e.failure, AZURE_FAILURE_REFUSED);
	ck_assert(!arm_error_certificate_missing(&e));

	ck_assert_int_eq(arm_error_from_answer(401, auth, strlen(auth), &e), 0);
	ck_assert_int_eq(e.failure, AZURE_FAILURE_UNAUTHENTICATED);
	ck_assert_int_eq(exit_code_for_azure_error(&e), PS_EXIT_AZURE_UNAUTHENTICATED);
	ck_assert_int_eq(arm_error_from_answer(403, auth, strlen(auth), &e), 0);
	ck_assert_int_eq(e.failure, AZURE_FAILURE_UNAUTHENTICATED);

	ck_assert_int_eq(arm_error_from_answer(429, "", 0, &e), PS_E_INVALID_REQUEST);
	ck_assert_int_eq(e.failure, AZURE_FAILURE_UNREACHABLE);
	ck_assert_int_eq(exit_code_for_azure_error(&e), PS_EXIT_AZURE_UNREACHABLE);
	ck_assert_str_eq(e.code, "");
	ck_assert_int_eq(arm_error_from_answer(404, "", 0, &e), PS_E_INVALID_REQUEST);
	ck_assert(arm_error_certificate_missing(&e));
	ck_assert_int_eq(arm_error_from_answer(302, "", 0, &e), PS_E_INVALID_REQUEST);
	ck_assert_int_eq(e.failure, AZURE_FAILURE_MALFORMED);
	ck_assert_int_eq(exit_code_for_azure_error(&e), PS_EXIT_INTERNAL);
}
END_TEST

START_TEST(exit_codes_and_printing)
{
	struct azure_error e = {0};
	char *text = NULL;
	size_t len = 0;
	FILE *f;

	ck_assert_int_eq(exit_code_for_azure_error(&e), PS_EXIT_INTERNAL);
	e.failure = AZURE_FAILURE_MISMATCH;
	ck_assert_int_eq(exit_code_for_azure_error(&e), PS_EXIT_THUMBPRINT_MISMATCH);
	e.failure = AZURE_FAILURE_INPUT;
	ck_assert_int_eq(exit_code_for_azure_error(&e), PS_EXIT_USAGE);
	e.failure = AZURE_FAILURE_INTERNAL;
	ck_assert_int_eq(exit_code_for_azure_error(&e), PS_EXIT_INTERNAL);

	azure_error_set(&e, AZURE_FAILURE_UNAUTHENTICATED,
			"Azure AD: AADSTS7000215: Invalid client secret.\r\nTrace ID: 1\r\n"
			"Bell\x07here\r\n");
	snprintf(e.code, sizeof(e.code), "invalid_client");
	e.status = 401;
	e.tries = 3;
	f = open_memstream(&text, &len);
	azure_error_print(f, &e);
	fclose(f);
	ck_assert_str_eq(text, "popsign: Azure AD: AADSTS7000215: Invalid client secret.\n"
			       "  Trace ID: 1\n  Bell?here (invalid_client, HTTP 401), after 3 tries\n");
	free(text);

	azure_error_set(&e, AZURE_FAILURE_REFUSED, "%s", "no code");
	azure_error_prefix(&e, "reading certificate '%s'", "c");
	ck_assert_str_eq(e.message, "reading certificate 'c': no code");
	f = open_memstream(&text, &len);
	azure_error_print(f, &e);
	fclose(f);
	ck_assert_str_eq(text, "popsign: reading certificate 'c': no code\n");
	free(text);
}
END_TEST

START_TEST(error_copy_keeps_utf8_whole)
{
	char buf[6];

	azure_error_copy(buf, sizeof(buf), "abcd\xc3\xa9");
	ck_assert_str_eq(buf, "abcd");
	azure_error_copy(buf, sizeof(buf), "ab\xe2\x82\xac");
	ck_assert_str_eq(buf, "ab\xe2\x82\xac");
	azure_error_copy(buf, sizeof(buf), "abc\xe2\x82\xac");
	ck_assert_str_eq(buf, "abc");
}
END_TEST

/* ---- Azure AD, the metadata endpoint and the Azure CLI ---- */

START_TEST(token_answers)
{
	static const char aad_ok[] = "{\"token_type\":\"Bearer\",\"expires_in\":3599,"
				     "\"ext_expires_in\":3599,\"access_token\":\"eyJ0.eyJ1.c2ln\"}";
	static const char imds_ok[] = "{\"access_token\":\"eyJ0.eyJ1.c2ln\",\"expires_in\":\"86399\","
				      "\"expires_on\":\"1700000000\",\"resource\":\"https://management.azure.com\"}";
	static const char aad_err[] = "{\"error\":\"invalid_client\",\"error_description\":"
				      "\"AADSTS7000215: Invalid client secret provided.\\r\\nTrace ID: t\","
				      "\"error_codes\":[7000215]}";
	static const char *const malformed[] = {
		"{\"expires_in\":1}",
		"{\"access_token\":\"a b\",\"expires_in\":1}",
		"{\"access_token\":\"abc\",\"expires_in\":\"soon\"}",
		"{\"access_token\":\"abc\"}",
		"{\"access_token\":\"\",\"expires_in\":1}",
		"not json",
	};
	struct aad_token_answer a;
	struct azure_error e;
	json_t *doc = NULL;

	ck_assert_int_eq(aad_parse_token_answer("Azure AD", 200, aad_ok, strlen(aad_ok), &doc, &a, &e), 0);
	ck_assert_str_eq(a.access_token, "eyJ0.eyJ1.c2ln");
	ck_assert_uint_eq(a.len, 14);
	ck_assert(a.expires_in == 3599);
	json_decref(doc);
	ck_assert_int_eq(aad_parse_token_answer("x", 200, imds_ok, strlen(imds_ok), &doc, &a, &e), 0);
	ck_assert(a.expires_in == 86399);
	json_decref(doc);

	doc = NULL;
	ck_assert_int_eq(aad_parse_token_answer("Azure AD", 401, aad_err, strlen(aad_err), &doc, &a, &e),
			 PS_E_UNAUTHORIZED);
	ck_assert_ptr_null(doc);
	ck_assert_int_eq(e.failure, AZURE_FAILURE_UNAUTHENTICATED);
	ck_assert_str_eq(e.code, "invalid_client");
	ck_assert_str_eq(e.message,
			 "Azure AD: AADSTS7000215: Invalid client secret provided.\r\nTrace ID: t");
	ck_assert_int_eq(e.status, 401);
	/* An error member wins even with 200. */
	ck_assert_int_eq(aad_parse_token_answer("Azure AD", 200, aad_err, strlen(aad_err), &doc, &a, &e),
			 PS_E_UNAUTHORIZED);
	ck_assert_int_eq(aad_parse_token_answer("Azure AD", 503, aad_err, strlen(aad_err), &doc, &a, &e),
			 PS_E_UNAUTHORIZED);
	ck_assert_int_eq(e.failure, AZURE_FAILURE_UNREACHABLE);
	ck_assert_int_eq(aad_parse_token_answer("Azure AD", 500, "oops", 4, &doc, &a, &e),
			 PS_E_UNAUTHORIZED);
	ck_assert_int_eq(e.failure, AZURE_FAILURE_UNREACHABLE);
	ck_assert_int_eq(aad_parse_token_answer("Azure AD", 400, "", 0, &doc, &a, &e),
			 PS_E_UNAUTHORIZED);
	ck_assert_int_eq(e.failure, AZURE_FAILURE_UNAUTHENTICATED);
	for (size_t i = 0; i < sizeof(malformed) / sizeof(malformed[0]); i++) {
		ck_assert_msg(aad_parse_token_answer("x", 200, malformed[i], strlen(malformed[i]), &doc,
						     &a, &e) == PS_E_INVALID_REQUEST,
			      "%s", malformed[i]);
		ck_assert_int_eq(e.failure, AZURE_FAILURE_MALFORMED);
	}
	ck_assert_ptr_null(doc);
}
END_TEST

START_TEST(cli_outputs)
{
	static const char with_epoch[] = "{\"accessToken\":\"tok.en\",\"expiresOn\":"
					 "\"2099-01-01 00:00:00.000000\",\"expires_on\":1700003600,"
					 "\"tokenType\":\"Bearer\"}";
	static const char local_only[] = "{\"accessToken\":\"tok.en\",\"expiresOn\":"
					 "\"2024-01-02 03:04:05.678901\"}";
	struct aad_token_answer a;
	struct tm tm = {.tm_year = 124, .tm_mon = 0, .tm_mday = 2, .tm_hour = 3, .tm_min = 4,
			.tm_sec = 5, .tm_isdst = -1};
	json_t *doc = NULL;

	ck_assert_int_eq(aad_parse_cli_output(with_epoch, strlen(with_epoch), 1700000000, &doc, &a), 0);
	ck_assert(a.expires_in == 3600);
	ck_assert_str_eq(a.access_token, "tok.en");
	json_decref(doc);
	ck_assert_int_eq(aad_parse_cli_output(local_only, strlen(local_only), 1700000000, &doc, &a), 0);
	ck_assert(a.expires_in == (int64_t)mktime(&tm) - 1700000000);
	json_decref(doc);
	doc = NULL;
	ck_assert_int_eq(aad_parse_cli_output("{\"accessToken\":\"t\"}", 19, 0, &doc, &a),
			 PS_E_INVALID_REQUEST);
	ck_assert_int_eq(aad_parse_cli_output("{\"accessToken\":\"t\",\"expiresOn\":\"tomorrow\"}",
					      42, 0, &doc, &a),
			 PS_E_INVALID_REQUEST);
	ck_assert_int_eq(aad_parse_cli_output("{\"expiresOn\":\"2024-01-02 03:04:05\"}", 35, 0, &doc,
					      &a),
			 PS_E_INVALID_REQUEST);
	ck_assert_int_eq(aad_parse_cli_output("ERROR", 5, 0, &doc, &a), PS_E_INVALID_REQUEST);
	ck_assert_ptr_null(doc);
}
END_TEST

START_TEST(token_files)
{
	char *dir = make_tmpdir(), *path = path_in(dir, "token");
	char *jwt = malloc(AAD_TOKEN_MAX + 2);
	struct secret *s = NULL;

	/* A real ARM token is longer than SECRET_MAX_SIZE: 3000 characters. */
	memset(jwt, 'a', 3000);
	jwt[1000] = jwt[2000] = '.';
	strcpy(jwt + 3000, "\n");
	write_file(path, jwt, 0600);
	ck_assert_int_eq(aad_read_token_file(path, &s), 0);
	ck_assert_uint_eq(s->len, 3000);
	ck_assert(memcmp(s->data, jwt, 3000) == 0 && s->data[3000] == '\0');
	secret_free(s);

	write_file(path, "abc\r\n", 0600);
	ck_assert_int_eq(aad_read_token_file(path, &s), 0);
	ck_assert_str_eq(s->data, "abc");
	secret_free(s);
	s = NULL;
	write_file(path, "abc\n", 0640);
	ck_assert_int_eq(aad_read_token_file(path, &s), PS_E_PERMISSIONS);
	write_file(path, "abc\n", 0604);
	ck_assert_int_eq(aad_read_token_file(path, &s), PS_E_PERMISSIONS);
	write_file(path, "", 0600);
	ck_assert_int_eq(aad_read_token_file(path, &s), PS_E_INVALID_REQUEST);
	write_file(path, "two\nlines\n", 0600);
	ck_assert_int_eq(aad_read_token_file(path, &s), PS_E_INVALID_REQUEST);
	write_file(path, "Bearer abc", 0600);
	ck_assert_int_eq(aad_read_token_file(path, &s), PS_E_INVALID_REQUEST);
	memset(jwt, 'a', AAD_TOKEN_MAX + 1);
	jwt[AAD_TOKEN_MAX + 1] = '\0';
	write_file(path, jwt, 0600);
	ck_assert_int_eq(aad_read_token_file(path, &s), PS_E_TOO_LARGE);
	jwt[AAD_TOKEN_MAX] = '\0';
	write_file(path, jwt, 0600);
	ck_assert_int_eq(aad_read_token_file(path, &s), 0);
	secret_free(s);
	s = NULL;
	ck_assert_int_eq(aad_read_token_file(dir, &s), PS_E_INVALID_REQUEST);
	free(path);
	path = path_in(dir, "absent");
	ck_assert_int_eq(aad_read_token_file(path, &s), PS_E_NOT_FOUND);
	ck_assert_ptr_null(s);
	ck_assert(aad_token_valid("ab.cd-ef_gh~+/==", 16) && !aad_token_valid("a=b", 3) &&
		  !aad_token_valid("", 0) && !aad_token_valid("=", 1));
	free(jwt);
	free(path);
	tmpdir_done(dir);
}
END_TEST

/* ---- the JWT client assertion ---- */

/* Writes a self-signed certificate and its key (of type alg) as PEM to
 * path with mode; returns the key (EVP_PKEY_free()). */
static EVP_PKEY *write_app_pem(const char *path, const char *alg, mode_t mode)
{
	EVP_PKEY *key = strcmp(alg, "RSA") == 0 ? EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048)
						: EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	X509 *x = X509_new();
	X509_NAME *name = X509_NAME_new();
	FILE *f = fopen(path, "w");

	ck_assert_ptr_nonnull(key);
	ck_assert_ptr_nonnull(f);
	X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"app", -1, -1, 0);
	X509_set_version(x, 2);
	ASN1_INTEGER_set(X509_get_serialNumber(x), 3);
	X509_set_subject_name(x, name);
	X509_set_issuer_name(x, name);
	X509_gmtime_adj(X509_getm_notBefore(x), 0);
	X509_gmtime_adj(X509_getm_notAfter(x), 3600);
	X509_set_pubkey(x, key);
	ck_assert_int_gt(X509_sign(x, key, EVP_sha256()), 0);
	ck_assert_int_eq(PEM_write_X509(f, x), 1);
	ck_assert_int_eq(PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL), 1);
	fclose(f);
	ck_assert_int_eq(chmod(path, mode), 0);
	X509_NAME_free(name);
	X509_free(x);
	return key;
}

/* base64url text to bytes (free()). */
static unsigned char *b64url_decode(const char *text, size_t len, size_t *ret_len)
{
	char *std = malloc(len + 4);
	unsigned char *out = malloc(len + 4);
	size_t n = len;
	int got;

	for (size_t i = 0; i < len; i++)
		std[i] = (char)(text[i] == '-' ? '+' : text[i] == '_' ? '/' : text[i]);
	while (n % 4)
		std[n++] = '=';
	got = EVP_DecodeBlock(out, (unsigned char *)std, (int)n);
	ck_assert_int_ge(got, 0);
	*ret_len = (size_t)got - (n - len); /* minus the padding added */
	free(std);
	return out;
}

static json_t *b64url_json(const char *text, size_t len)
{
	size_t n = 0;
	unsigned char *raw = b64url_decode(text, len, &n);
	json_t *doc = json_loadb((const char *)raw, n, JSON_REJECT_DUPLICATES, NULL);

	ck_assert_ptr_nonnull(doc);
	free(raw);
	return doc;
}

START_TEST(jwt_assertion)
{
	char *dir = make_tmpdir(), *path = path_in(dir, "app.pem"), *jwt = NULL, *x5t = NULL;
	EVP_PKEY *written = write_app_pem(path, "RSA", 0600), *key = NULL;
	unsigned char sha1[20], *sig;
	unsigned int sha1_len = 0;
	const char *dot1, *dot2;
	json_t *header, *claims;
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	X509 *cert = NULL;
	size_t sig_len = 0;

	ck_assert_int_eq(jwt_load_pem(path, &key, &cert), 0);
	ck_assert_int_eq(EVP_PKEY_eq(key, written), 1);
	ck_assert_int_eq(jwt_client_assertion(key, cert, "http://127.0.0.1:1/t/oauth2/v2.0/token",
					      "client-1", 1700000000, &jwt),
			 0);
	dot1 = strchr(jwt, '.');
	dot2 = dot1 ? strchr(dot1 + 1, '.') : NULL;
	ck_assert(dot1 && dot2 && !strchr(dot2 + 1, '.'));
	ck_assert(!strpbrk(jwt, "+/="));

	header = b64url_json(jwt, (size_t)(dot1 - jwt));
	X509_digest(cert, EVP_sha1(), sha1, &sha1_len);
	ck_assert_int_eq(jwt_base64url(sha1, sha1_len, &x5t), 0);
	ck_assert_str_eq(json_string_value(json_object_get(header, "alg")), "RS256");
	ck_assert_str_eq(json_string_value(json_object_get(header, "typ")), "JWT");
	ck_assert_str_eq(json_string_value(json_object_get(header, "x5t")), x5t);
	ck_assert_uint_eq(json_object_size(header), 3);

	claims = b64url_json(dot1 + 1, (size_t)(dot2 - dot1 - 1));
	ck_assert_str_eq(json_string_value(json_object_get(claims, "aud")),
			 "http://127.0.0.1:1/t/oauth2/v2.0/token");
	ck_assert_str_eq(json_string_value(json_object_get(claims, "iss")), "client-1");
	ck_assert_str_eq(json_string_value(json_object_get(claims, "sub")), "client-1");
	ck_assert_uint_eq(strlen(json_string_value(json_object_get(claims, "jti"))), 36);
	ck_assert(json_integer_value(json_object_get(claims, "nbf")) == 1700000000);
	ck_assert(json_integer_value(json_object_get(claims, "iat")) == 1700000000);
	ck_assert(json_integer_value(json_object_get(claims, "exp")) == 1700000600);

	/* The signature verifies with the certificate's key, RS256. */
	sig = b64url_decode(dot2 + 1, strlen(dot2 + 1), &sig_len);
	ck_assert_int_eq(EVP_DigestVerifyInit(ctx, NULL, EVP_sha256(), NULL, X509_get0_pubkey(cert)), 1);
	ck_assert_int_eq(EVP_DigestVerify(ctx, sig, sig_len, (const unsigned char *)jwt,
					  (size_t)(dot2 - jwt)),
			 1);

	free(sig);
	EVP_MD_CTX_free(ctx);
	json_decref(header);
	json_decref(claims);
	free(jwt);
	free(x5t);
	EVP_PKEY_free(key);
	EVP_PKEY_free(written);
	X509_free(cert);
	free(path);
	tmpdir_done(dir);
}
END_TEST

START_TEST(jwt_pem_refusals)
{
	char *dir = make_tmpdir(), *path = path_in(dir, "app.pem");
	EVP_PKEY *key = NULL;
	X509 *cert = NULL;

	EVP_PKEY_free(write_app_pem(path, "RSA", 0644));
	ck_assert_int_eq(jwt_load_pem(path, &key, &cert), PS_E_PERMISSIONS);
	EVP_PKEY_free(write_app_pem(path, "EC", 0600));
	ck_assert_int_eq(jwt_load_pem(path, &key, &cert), PS_E_UNSUPPORTED);
	write_file(path, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", 0600);
	ck_assert_int_eq(jwt_load_pem(path, &key, &cert), PS_E_INVALID_REQUEST);
	ck_assert_int_eq(jwt_load_pem(dir, &key, &cert), PS_E_IO);
	free(path);
	path = path_in(dir, "absent.pem");
	ck_assert_int_eq(jwt_load_pem(path, &key, &cert), PS_E_NOT_FOUND);
	ck_assert_ptr_null(key);
	ck_assert_ptr_null(cert);
	free(path);
	tmpdir_done(dir);
}
END_TEST

/* ---- the credential chain ---- */

static void clear_azure_env(void)
{
	static const char *const vars[] = {
		"AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET",
		"AZURE_CLIENT_CERTIFICATE_PATH", "AZURE_AUTHORITY_HOST",
		"AZURE_POD_IDENTITY_AUTHORITY_HOST",
	};

	for (size_t i = 0; i < sizeof(vars) / sizeof(vars[0]); i++)
		unsetenv(vars[i]);
}

static enum aad_source source_for(const struct aad_options *o)
{
	struct azure_error e = {0};
	struct aad *a = NULL;
	enum aad_source s;

	ck_assert_msg(aad_new(o, &a, &e) == 0, "%s", e.message);
	s = aad_source(a);
	ck_assert_ptr_nonnull(aad_describe(a));
	aad_free(a);
	return s;
}

START_TEST(credential_chain_order)
{
	char *dir = make_tmpdir(), *empty = path_in(dir, "empty"), *bin = path_in(dir, "bin");
	char *az = path_in(bin, "az");
	struct aad_options o = {0}, mi = {.managed_identity = true};
	struct aad_options file = {.access_token_file = "/nonexistent", .managed_identity = true};
	struct azure_error e = {0};
	struct aad *a = NULL;

	clear_azure_env();
	ck_assert_int_eq(mkdir(empty, 0700), 0);
	ck_assert_int_eq(mkdir(bin, 0700), 0);
	write_file(az, "#!/bin/sh\nexit 1\n", 0755);
	setenv("PATH", empty, 1);

	/* Nothing applies. */
	ck_assert_int_eq(aad_new(&o, &a, &e), PS_E_UNAUTHORIZED);
	ck_assert_ptr_null(a);
	ck_assert_int_eq(e.failure, AZURE_FAILURE_UNAUTHENTICATED);
	ck_assert_int_eq(exit_code_for_azure_error(&e), PS_EXIT_AZURE_UNAUTHENTICATED);
	/* az on PATH; the managed identity only when asked for. */
	setenv("PATH", bin, 1);
	ck_assert_int_eq(source_for(&o), AAD_SOURCE_AZURE_CLI);
	ck_assert_int_eq(source_for(&mi), AAD_SOURCE_MANAGED_IDENTITY);
	/* An application in the environment beats both; a secret beats a certificate. */
	setenv("AZURE_TENANT_ID", "contoso.onmicrosoft.com", 1);
	setenv("AZURE_CLIENT_ID", "c", 1);
	ck_assert_int_eq(source_for(&mi), AAD_SOURCE_MANAGED_IDENTITY);
	setenv("AZURE_CLIENT_CERTIFICATE_PATH", "/x.pem", 1);
	ck_assert_int_eq(source_for(&mi), AAD_SOURCE_CLIENT_CERTIFICATE);
	setenv("AZURE_CLIENT_SECRET", "s", 1);
	ck_assert_int_eq(source_for(&mi), AAD_SOURCE_CLIENT_SECRET);
	/* A token file beats everything. */
	ck_assert_int_eq(source_for(&file), AAD_SOURCE_TOKEN_FILE);
	/* Unusable settings are input errors, not silently skipped. */
	setenv("AZURE_TENANT_ID", "../evil", 1);
	ck_assert_int_eq(aad_new(&o, &a, &e), PS_E_INVALID_REQUEST);
	ck_assert_int_eq(e.failure, AZURE_FAILURE_INPUT);
	setenv("AZURE_TENANT_ID", "t", 1);
	setenv("AZURE_AUTHORITY_HOST", "http://login.example.com", 1);
	ck_assert_int_eq(aad_new(&o, &a, &e), PS_E_INVALID_REQUEST);
	ck_assert_ptr_nonnull(strstr(e.message, "AZURE_AUTHORITY_HOST"));
	clear_azure_env();
	setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", "ftp://x", 1);
	ck_assert_int_eq(aad_new(&mi, &a, &e), PS_E_INVALID_REQUEST);
	ck_assert_ptr_null(a);
	clear_azure_env();
	free(empty);
	free(bin);
	free(az);
	tmpdir_done(dir);
}
END_TEST

/* PATH: dir first, then the system's (the fake az scripts need date). */
static void path_with(const char *dir)
{
	char *path = NULL;

	ck_assert_int_gt(asprintf(&path, "%s:/usr/bin:/bin", dir), 0);
	setenv("PATH", path, 1);
	free(path);
}

/* An az that counts its runs in DIR/runs and prints a token expiring in
 * `life` seconds. */
static void write_fake_az(const char *bin, long life, const char *token)
{
	char *az = path_in(bin, "az"), *script = NULL;

	ck_assert_int_gt(asprintf(&script,
				  "#!/bin/sh\necho run >> '%s/runs'\n"
				  "echo '{\"accessToken\": \"%s\", \"expires_on\": '$(($(date +%%s) + %ld))'}'\n",
				  bin, token, life),
			 0);
	write_file(az, script, 0755);
	free(script);
	free(az);
}

static size_t runs(const char *bin)
{
	char *path = path_in(bin, "runs");
	FILE *f = fopen(path, "r");
	size_t n = 0;
	int c;

	while (f && (c = fgetc(f)) != EOF)
		n += c == '\n';
	if (f)
		fclose(f);
	free(path);
	return n;
}

START_TEST(token_refreshed_before_expiry)
{
	char *dir = make_tmpdir();
	struct aad_options o = {0};
	const struct secret *t1 = NULL, *t2 = NULL;
	struct azure_error e = {0};
	struct aad *a = NULL;

	clear_azure_env();
	path_with(dir);
	/* Lives 4 s (3 to 4, as whole seconds go): fetched again after half
	 * of it, so within 2 s. */
	write_fake_az(dir, 4, "first.token");
	ck_assert_int_eq(aad_new(&o, &a, &e), 0);
	ck_assert_int_eq(aad_source(a), AAD_SOURCE_AZURE_CLI);
	ck_assert_msg(aad_token(a, &t1, &e) == 0, "%s", e.message);
	ck_assert_str_eq(t1->data, "first.token");
	ck_assert_int_eq(aad_token(a, &t2, &e), 0);
	ck_assert_uint_eq(runs(dir), 1);
	write_fake_az(dir, 3600, "second.token");
	sleep(3);
	ck_assert_int_eq(aad_token(a, &t2, &e), 0);
	ck_assert_str_eq(t2->data, "second.token");
	ck_assert_uint_eq(runs(dir), 2);
	ck_assert_int_eq(aad_token(a, &t2, &e), 0);
	ck_assert_uint_eq(runs(dir), 2);
	aad_free(a);
	tmpdir_done(dir);
}
END_TEST

START_TEST(azure_cli_failures)
{
	char *dir = make_tmpdir(), *az = path_in(dir, "az");
	struct aad_options o = {0};
	const struct secret *t = NULL;
	struct azure_error e = {0};
	struct aad *a = NULL;

	clear_azure_env();
	path_with(dir);
	write_file(az, "#!/bin/sh\nexit 3\n", 0755);
	ck_assert_int_eq(aad_new(&o, &a, &e), 0);
	ck_assert_int_eq(aad_token(a, &t, &e), PS_E_UNAUTHORIZED);
	ck_assert_int_eq(e.failure, AZURE_FAILURE_UNAUTHENTICATED);
	ck_assert_ptr_nonnull(strstr(e.message, "exit status 3"));
	write_file(az, "#!/bin/sh\necho '{\"tokenType\": \"Bearer\"}'\n", 0755);
	ck_assert_int_eq(aad_token(a, &t, &e), PS_E_INVALID_REQUEST);
	ck_assert_int_eq(e.failure, AZURE_FAILURE_MALFORMED);
	write_file(az, "#!/bin/sh\nkill -9 $$\n", 0755);
	ck_assert_int_lt(aad_token(a, &t, &e), 0);
	ck_assert_ptr_nonnull(strstr(e.message, "signal 9"));
	/* It reads nothing from us: stdin is /dev/null, not the test's. */
	write_file(az, "#!/bin/sh\nread x; echo \"{\\\"accessToken\\\": \\\"t$x\\\", "
		       "\\\"expires_on\\\": 4070908800}\"\n",
		   0755);
	ck_assert_int_eq(aad_token(a, &t, &e), 0);
	ck_assert_str_eq(t->data, "t");
	aad_free(a);
	free(az);
	tmpdir_done(dir);
}
END_TEST

/* ---- a fake server: one canned answer per connection, in order ---- */

#define FAKE_MAX 4

struct fake {
	int fd, port;
	char *answers[FAKE_MAX];
	size_t n;
	char requests[FAKE_MAX][16384];
	pthread_t thread;
};

static size_t content_length(const char *head)
{
	const char *p = strcasestr(head, "\r\nContent-Length:");

	return p ? strtoul(p + 17, NULL, 10) : 0;
}

static void fake_read(char *buf, size_t cap, int c)
{
	size_t len = 0;

	while (len < cap - 1) {
		ssize_t n = recv(c, buf + len, cap - 1 - len, 0);
		const char *end;

		if (n <= 0)
			break;
		len += (size_t)n;
		buf[len] = '\0';
		end = strstr(buf, "\r\n\r\n");
		if (end && len >= (size_t)(end + 4 - buf) + content_length(buf))
			break;
	}
}

static void *fake_serve(void *arg)
{
	struct fake *f = arg;

	for (size_t i = 0; i < f->n; i++) {
		int c = accept(f->fd, NULL, NULL);

		if (c < 0)
			return NULL;
		fake_read(f->requests[i], sizeof(f->requests[i]), c);
		if (f->answers[i][0])
			(void)send(c, f->answers[i], strlen(f->answers[i]), MSG_NOSIGNAL);
		shutdown(c, SHUT_RDWR);
		close(c);
	}
	return NULL;
}

/* Answers: full HTTP responses, or "" to drop the connection. */
static void fake_start(struct fake *f, size_t n, ...)
{
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t sl = sizeof(sa);
	va_list ap;

	memset(f, 0, sizeof(*f));
	va_start(ap, n);
	for (size_t i = 0; i < n; i++)
		f->answers[i] = strdup(va_arg(ap, const char *));
	va_end(ap);
	f->n = n;
	f->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	ck_assert_int_ge(f->fd, 0);
	ck_assert_int_eq(bind(f->fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	ck_assert_int_eq(listen(f->fd, 8), 0);
	ck_assert_int_eq(getsockname(f->fd, (struct sockaddr *)&sa, &sl), 0);
	f->port = ntohs(sa.sin_port);
	ck_assert_int_eq(pthread_create(&f->thread, NULL, fake_serve, f), 0);
}

static void fake_finish(struct fake *f)
{
	pthread_join(f->thread, NULL);
	close(f->fd);
	for (size_t i = 0; i < f->n; i++)
		free(f->answers[i]);
}

/* A loopback port nothing listens on (it did a moment ago). */
static int free_port(void)
{
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t sl = sizeof(sa);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&sa, &sl), 0);
	close(fd);
	return ntohs(sa.sin_port);
}

static char *answer(int status, const char *headers, const char *body)
{
	char *a = NULL;

	ck_assert_int_gt(asprintf(&a,
				  "HTTP/1.1 %d X\r\nContent-Type: application/json; charset=utf-8\r\n"
				  "%sContent-Length: %zu\r\nConnection: close\r\n\r\n%s",
				  status, headers, strlen(body), body),
			 0);
	return a;
}

static char *fake_url(const struct fake *f)
{
	char *url = NULL;

	ck_assert_int_gt(asprintf(&url, "http://127.0.0.1:%d", f->port), 0);
	return url;
}

START_TEST(http_retries_then_succeeds)
{
	char *a1 = answer(503, "Retry-After: 0\r\n", "{}"), *a3 = answer(200, "", "{\"ok\": 1}");
	struct transport_response resp = {0};
	struct azure_error e = {0};
	const char *headers[] = {"If-Match: AAAA=", NULL};
	unsigned tries = 0;
	struct fake f;
	char *url;

	/* An https proxy must not capture plain http to loopback. */
	setenv("https_proxy", "http://127.0.0.1:1", 1);
	setenv("http_proxy", "http://127.0.0.1:1", 1);
	setenv("ALL_PROXY", "http://127.0.0.1:1", 1);
	fake_start(&f, 3, a1, "", a3);
	url = fake_url(&f);
	struct azure_http_request req = {.what = "test", .method = "POST", .url = url,
					 .headers = headers};
	ck_assert_msg(azure_http_send(&req, &resp, &tries, &e) == 0, "%s", e.message);
	fake_finish(&f);
	ck_assert_int_eq(resp.status, 200);
	ck_assert_uint_eq(tries, 3);
	ck_assert_str_eq(resp.body, "{\"ok\": 1}");
	for (size_t i = 0; i < 3; i++) {
		ck_assert_ptr_nonnull(strstr(f.requests[i], "POST / HTTP/1.1\r\n"));
		ck_assert_ptr_nonnull(strstr(f.requests[i], "\r\nIf-Match: AAAA=\r\n"));
		ck_assert_ptr_nonnull(strstr(f.requests[i], "\r\nContent-Length: 0\r\n"));
	}
	transport_response_clear(&resp);
	unsetenv("https_proxy");
	unsetenv("http_proxy");
	unsetenv("ALL_PROXY");
	free(url);
	free(a1);
	free(a3);
}
END_TEST

START_TEST(http_gives_up_after_three_tries)
{
	char *a = answer(500, "Retry-After: 0\r\n", "{\"error\": {\"code\": \"X\", \"message\": \"m\"}}");
	char *bad = answer(429, "Retry-After: 3600\r\n", "{}");
	struct transport_response resp = {0};
	struct azure_error e = {0};
	unsigned tries = 0;
	struct fake f;
	char *url;

	fake_start(&f, 3, a, a, a);
	url = fake_url(&f);
	struct azure_http_request req = {.what = "test", .method = "GET", .url = url};
	ck_assert_int_eq(azure_http_send(&req, &resp, &tries, &e), 0);
	fake_finish(&f);
	ck_assert_int_eq(resp.status, 500);
	ck_assert_uint_eq(tries, 3);
	transport_response_clear(&resp);
	free(url);

	/* A Retry-After past the budget is not waited for. */
	fake_start(&f, 1, bad);
	url = fake_url(&f);
	req.url = url;
	ck_assert_int_eq(azure_http_send(&req, &resp, &tries, &e), 0);
	fake_finish(&f);
	ck_assert_int_eq(resp.status, 429);
	ck_assert_uint_eq(tries, 1);
	ck_assert_str_eq(resp.retry_after, "3600");
	transport_response_clear(&resp);
	free(url);

	/* Nothing listening: three tries (1 s and 2 s apart), then unreachable. */
	f.port = free_port();
	url = fake_url(&f);
	req.url = url;
	ck_assert_int_eq(azure_http_send(&req, &resp, &tries, &e), PS_E_IO);
	ck_assert_int_eq(e.failure, AZURE_FAILURE_UNREACHABLE);
	ck_assert_uint_eq(e.tries, 3);
	free(url);
	free(a);
	free(bad);
}
END_TEST

static const char cert_answer[] = CERT_JSON("", ", \"id\": \"/x\"");
static const char code_answer[] =
	"{\"properties\": {\"verificationCode\": \"6BB8A91439C341197E8B721BBF6609D16158A5EB17103125\", "
	"\"subject\": \"Dev CA\", \"expiry\": \"Sun, 03 Dec 2017 21:02:47 GMT\", "
	"\"thumbprint\": \"9F0983E8F2DB2DB3582997FEF331247D872DEE32\", \"isVerified\": false}, "
	"\"name\": \"c1\", \"etag\": \"AAAAAAeHgZ0=\"}";

/* An ARM client for the fake, with a token file holding "arm.token". */
static struct arm *fake_arm(const struct fake *f, char *dir, struct aad **ret_aad)
{
	char *tok = path_in(dir, "arm.token"), *url = fake_url(f);
	struct aad_options o = {.access_token_file = tok};
	struct azure_error e = {0};
	struct arm *arm = NULL;

	write_file(tok, "arm.token\n", 0600);
	ck_assert_int_eq(aad_new(&o, ret_aad, &e), 0);
	ck_assert_int_eq(arm_new(url, *ret_aad, &arm, &e), 0);
	free(tok);
	free(url);
	return arm;
}

static const char test_pem[] = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

START_TEST(arm_operations_on_the_wire)
{
	char *dir = make_tmpdir();
	char *put = answer(200, "", cert_answer), *gen = answer(200, "", code_answer);
	char *ver = answer(200, "", cert_answer), *del = answer(200, "", "");
	struct arm_target t = {.service = ARM_SERVICE_DPS, .subscription = "s", .resource_group = "g",
			       .name = "d"};
	struct arm_certificate *c = NULL;
	struct azure_error e = {0};
	struct aad *aad = NULL;
	struct arm *arm;
	struct fake f;
	char b64[256];

	fake_start(&f, 4, put, gen, ver, del);
	arm = fake_arm(&f, dir, &aad);
	ck_assert_msg(arm_put(arm, &t, "c1", test_pem, &c, &e) == 0, "%s", e.message);
	arm_certificate_free(c);
	ck_assert_int_eq(arm_generate_code(arm, &t, "c1", "AAAAAAeHgZI=", &c, &e), 0);
	ck_assert_str_eq(c->verification_code, "6BB8A91439C341197E8B721BBF6609D16158A5EB17103125");
	arm_certificate_free(c);
	ck_assert_int_eq(arm_verify(arm, &t, "c1", "AAAAAAeHgZ0=", test_pem, &c, &e), 0);
	arm_certificate_free(c);
	ck_assert_int_eq(arm_delete(arm, &t, "c1", "AAAAAAeHgZ0=", &e), 0);
	fake_finish(&f);

	EVP_EncodeBlock((unsigned char *)b64, (const unsigned char *)test_pem, (int)strlen(test_pem));
	ck_assert_ptr_nonnull(strstr(f.requests[0],
				     "PUT /subscriptions/s/resourceGroups/g/providers/Microsoft.Devices/"
				     "provisioningServices/d/certificates/c1?api-version=2022-12-12 "));
	ck_assert_ptr_nonnull(strstr(f.requests[0], "\r\nAuthorization: Bearer arm.token\r\n"));
	ck_assert_ptr_nonnull(strstr(f.requests[0], "\r\nContent-Type: application/json\r\n"));
	ck_assert_ptr_null(strcasestr(f.requests[0], "If-Match"));
	ck_assert_ptr_null(strstr(f.requests[0], "isVerified"));
	ck_assert_ptr_nonnull(strstr(f.requests[0], "\r\n\r\n{\"properties\":{\"certificate\":\""));
	ck_assert_ptr_nonnull(strstr(f.requests[0], b64));
	ck_assert_ptr_nonnull(strstr(f.requests[1], "POST /subscriptions/s/resourceGroups/g/providers/"
						    "Microsoft.Devices/provisioningServices/d/certificates/"
						    "c1/generateVerificationCode?api-version=2022-12-12 "));
	ck_assert_ptr_nonnull(strstr(f.requests[1], "\r\nIf-Match: AAAAAAeHgZI=\r\n"));
	ck_assert_ptr_nonnull(strstr(f.requests[1], "\r\nContent-Length: 0\r\n"));
	ck_assert_ptr_nonnull(strstr(f.requests[2], "/certificates/c1/verify?api-version=2022-12-12 "));
	ck_assert_ptr_nonnull(strstr(f.requests[2], "\r\nIf-Match: AAAAAAeHgZ0=\r\n"));
	/* DPS takes the verification certificate as base64 of the PEM. */
	ck_assert_ptr_nonnull(strstr(f.requests[2], "\r\n\r\n{\"certificate\":\""));
	ck_assert_ptr_nonnull(strstr(f.requests[2], b64));
	ck_assert_ptr_nonnull(strstr(f.requests[3], "DELETE /subscriptions/s/"));
	ck_assert_ptr_nonnull(strstr(f.requests[3], "\r\nIf-Match: AAAAAAeHgZ0=\r\n"));

	/* IoT Hub: the PEM text itself, and its own api-version (or one given). */
	fake_start(&f, 1, ver);
	arm_free(arm);
	aad_free(aad);
	arm = fake_arm(&f, dir, &aad);
	t.service = ARM_SERVICE_IOTHUB;
	t.api_version = "2021-07-02";
	ck_assert_int_eq(arm_verify(arm, &t, "c1", "E", test_pem, &c, &e), 0);
	arm_certificate_free(c);
	fake_finish(&f);
	ck_assert_ptr_nonnull(strstr(f.requests[0], "/IotHubs/d/certificates/c1/verify?api-version=2021-07-02 "));
	ck_assert_ptr_nonnull(strstr(f.requests[0], "{\"certificate\":\"-----BEGIN CERTIFICATE-----\\n"));

	arm_free(arm);
	aad_free(aad);
	free(put);
	free(gen);
	free(ver);
	free(del);
	tmpdir_done(dir);
}
END_TEST

START_TEST(arm_operation_failures)
{
	char *dir = make_tmpdir();
	char *stale = answer(412, "", "{\"code\":412001,\"httpStatusCode\":\"PreconditionFailed\","
				      "\"message\":\"Invalid ETag supplied.\"}");
	char *unauth = answer(401, "", "{\"error\":{\"code\":\"InvalidAuthenticationToken\","
				       "\"message\":\"The access token is invalid.\"}}");
	char *nocode = answer(200, "", cert_answer), *junk = answer(200, "", "{\"value\": 1}");
	struct arm_target t = {.service = ARM_SERVICE_DPS, .subscription = "s", .resource_group = "g",
			       .name = "d"};
	struct arm_certificate_list *l = NULL;
	struct arm_certificate *c = NULL;
	struct azure_error e = {0};
	struct aad *aad = NULL;
	struct arm *arm;
	struct fake f;

	fake_start(&f, 4, stale, unauth, nocode, junk);
	arm = fake_arm(&f, dir, &aad);
	ck_assert_int_eq(arm_generate_code(arm, &t, "c1", "old", &c, &e), PS_E_INVALID_REQUEST);
	ck_assert_int_eq(e.status, 412);
	ck_assert_str_eq(e.code, "412001");
	ck_assert_str_eq(e.message, "getting a verification code for certificate 'c1' of DPS 'd': "
				    "Invalid ETag supplied.");
	ck_assert_uint_eq(e.tries, 1);
	ck_assert_int_eq(arm_get(arm, &t, "c1", &c, &e), PS_E_UNAUTHORIZED);
	ck_assert_int_eq(e.failure, AZURE_FAILURE_UNAUTHENTICATED);
	ck_assert_int_eq(arm_generate_code(arm, &t, "c1", "e", &c, &e), PS_E_INVALID_REQUEST);
	ck_assert_int_eq(e.failure, AZURE_FAILURE_MALFORMED);
	ck_assert_ptr_nonnull(strstr(e.message, "no verificationCode"));
	ck_assert_int_eq(arm_list(arm, &t, &l, &e), PS_E_INVALID_REQUEST);
	ck_assert_int_eq(e.failure, AZURE_FAILURE_MALFORMED);
	ck_assert_ptr_null(c);
	ck_assert_ptr_null(l);
	fake_finish(&f);
	arm_free(arm);
	aad_free(aad);
	free(stale);
	free(unauth);
	free(nocode);
	free(junk);
	tmpdir_done(dir);
}
END_TEST

static Suite *azure_suite(void)
{
	Suite *s = suite_create("azure client");
	TCase *parse = tcase_create("parsing");
	TCase *creds = tcase_create("credentials");
	TCase *wire = tcase_create("wire");

	tcase_add_test(parse, every_recorded_body_parses);
	tcase_add_test(parse, yaml_scalar_folding);
	tcase_add_test(parse, httpdate_good_and_bad);
	tcase_add_test(parse, retry_policy);
	tcase_add_test(parse, retry_after_values);
	tcase_add_test(parse, endpoint_urls);
	tcase_add_test(parse, endpoint_resources);
	tcase_add_test(parse, paths_and_names);
	tcase_add_test(parse, certificate_shapes);
	tcase_add_test(parse, answer_kinds);
	tcase_add_test(parse, error_shapes);
	tcase_add_test(parse, exit_codes_and_printing);
	tcase_add_test(parse, error_copy_keeps_utf8_whole);
	tcase_add_test(parse, token_answers);
	tcase_add_test(parse, cli_outputs);
	suite_add_tcase(s, parse);
	tcase_add_test(creds, token_files);
	tcase_add_test(creds, jwt_assertion);
	tcase_add_test(creds, jwt_pem_refusals);
	tcase_add_test(creds, credential_chain_order);
	tcase_add_test(creds, token_refreshed_before_expiry);
	tcase_add_test(creds, azure_cli_failures);
	suite_add_tcase(s, creds);
	tcase_add_test(wire, http_retries_then_succeeds);
	tcase_add_test(wire, http_gives_up_after_three_tries);
	tcase_add_test(wire, arm_operations_on_the_wire);
	tcase_add_test(wire, arm_operation_failures);
	suite_add_tcase(s, wire);
	return s;
}

int main(void)
{
	int failed;

	if (transport_global_init() < 0)
		return 1;
	failed = check_run(azure_suite());
	transport_global_cleanup();
	return failed == 0 ? 0 : 1;
}
