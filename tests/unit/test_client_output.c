/* The client's library: exit codes, error answers, the keys table, files
 * written whole or not at all, bearer tokens, input checks, and the API
 * calls against a fake popsignd on a loopback socket. */
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

/* auth.h brings daemon/config.h: a plain "config.h" would find the build
 * directory's generated one first. */
#include "testdir.h"
#include "auth.h"
#include "bearer.h"
#include "daemon_api.h"
#include "error.h"
#include "exit_code.h"
#include "output.h"
#include "text.h"
#include "transport.h"
#include "check_run.h"

#define CODE48 "3F2A9C1B7E6D5A4F3E2D1C0B9A8F7E6D5C4B3A2F1E0D9C8B"

/* ---- helpers ---- */

static size_t dir_entries(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	size_t n = 0;

	ck_assert_ptr_nonnull(d);
	while ((e = readdir(d)))
		if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
			n++;
	closedir(d);
	return n;
}

static char *read_text(const char *path)
{
	FILE *f = fopen(path, "r");
	char *buf = calloc(1, 65536);
	size_t n;

	ck_assert_ptr_nonnull(f);
	n = fread(buf, 1, 65535, f);
	buf[n] = '\0';
	fclose(f);
	return buf;
}

static void write_text(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");

	ck_assert_ptr_nonnull(f);
	fputs(text, f);
	fclose(f);
}

/* A self-signed EC certificate with subject CN=cn, as PEM (free()). */
static char *make_cert_pem(const char *cn)
{
	EVP_PKEY *key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	X509 *x = X509_new();
	X509_NAME *name = X509_NAME_new();
	BIO *bio = BIO_new(BIO_s_mem());
	char *data = NULL, *pem;
	long len;

	ck_assert_ptr_nonnull(key);
	X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
	X509_set_version(x, 2);
	ASN1_INTEGER_set(X509_get_serialNumber(x), 7);
	X509_set_subject_name(x, name);
	X509_set_issuer_name(x, name);
	X509_gmtime_adj(X509_getm_notBefore(x), 0);
	X509_gmtime_adj(X509_getm_notAfter(x), 3600);
	X509_set_pubkey(x, key);
	ck_assert_int_gt(X509_sign(x, key, EVP_sha256()), 0);
	ck_assert_int_eq(PEM_write_bio_X509(bio, x), 1);
	len = BIO_get_mem_data(bio, &data);
	pem = strndup(data, (size_t)len);
	BIO_free(bio);
	X509_NAME_free(name);
	X509_free(x);
	EVP_PKEY_free(key);
	return pem;
}

/* A stream whose text lands in *buf once flushed or closed. */
static FILE *capture(char **buf, size_t *len)
{
	FILE *f = open_memstream(buf, len);

	ck_assert_ptr_nonnull(f);
	return f;
}

/* ---- a fake popsignd: one canned answer per connection ---- */

struct fake {
	int fd;
	int port;
	char *answer;         /* raw bytes sent back */
	size_t answer_len;
	char request[16384];  /* what the client sent */
	size_t request_len;
	pthread_t thread;
};

static size_t content_length(const char *head)
{
	const char *p = strcasestr(head, "\r\nContent-Length:");

	return p ? strtoul(p + 17, NULL, 10) : 0;
}

static void fake_read_request(struct fake *f, int c)
{
	char *end = NULL;

	while (f->request_len < sizeof(f->request) - 1) {
		ssize_t n = recv(c, f->request + f->request_len,
				 sizeof(f->request) - 1 - f->request_len, 0);

		if (n <= 0)
			break;
		f->request_len += (size_t)n;
		f->request[f->request_len] = '\0';
		end = strstr(f->request, "\r\n\r\n");
		if (end && f->request_len >= (size_t)(end + 4 - f->request) + content_length(f->request))
			break;
	}
}

static void *fake_serve(void *arg)
{
	struct fake *f = arg;
	int c = accept(f->fd, NULL, NULL);
	size_t off = 0;

	if (c < 0)
		return NULL;
	fake_read_request(f, c);
	while (off < f->answer_len) {
		/* MSG_NOSIGNAL: a client that stops reading must not kill us. */
		ssize_t n = send(c, f->answer + off, f->answer_len - off, MSG_NOSIGNAL);

		if (n <= 0)
			break;
		off += (size_t)n;
	}
	shutdown(c, SHUT_WR);
	close(c);
	return NULL;
}

static void fake_start_raw(struct fake *f, char *answer, size_t len)
{
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t sl = sizeof(sa);

	memset(f, 0, sizeof(*f));
	f->answer = answer;
	f->answer_len = len;
	f->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	ck_assert_int_ge(f->fd, 0);
	ck_assert_int_eq(bind(f->fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	ck_assert_int_eq(listen(f->fd, 4), 0);
	ck_assert_int_eq(getsockname(f->fd, (struct sockaddr *)&sa, &sl), 0);
	f->port = ntohs(sa.sin_port);
	ck_assert_int_eq(pthread_create(&f->thread, NULL, fake_serve, f), 0);
}

static void fake_start(struct fake *f, int status, const char *ctype, const char *body)
{
	char *answer = NULL;
	int n = asprintf(&answer,
			 "HTTP/1.1 %d X\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
			 "Connection: close\r\n\r\n%s",
			 status, ctype, strlen(body), body);

	ck_assert_int_gt(n, 0);
	fake_start_raw(f, answer, (size_t)n);
}

static void fake_finish(struct fake *f)
{
	pthread_join(f->thread, NULL);
	close(f->fd);
	free(f->answer);
}

static struct secret test_token = {.data = (char *)"tok-en_1.2~3+4/5==", .len = 18};

static struct daemon_api *fake_api(const struct fake *f)
{
	struct daemon_api *api = NULL;
	struct daemon_error err = {0};
	char url[64];

	snprintf(url, sizeof(url), "http://127.0.0.1:%d", f->port);
	ck_assert_int_eq(daemon_api_new(url, &test_token, &api, &err), 0);
	return api;
}

static const char key_json[] =
	"{\"name\": \"root-ca\", \"algorithm\": \"EC-P256\", \"subject\": \"CN=Dev Root\", "
	"\"sha1_thumbprint\": \"0123456789ABCDEF0123456789ABCDEF01234567\", "
	"\"sha256_fingerprint\": \"ab\", \"not_before\": \"2026-01-01T00:00:00Z\", "
	"\"not_after\": \"2027-01-01T00:00:00Z\"}";

/* ---- exit codes ---- */

START_TEST(exit_table_is_fixed)
{
	/* Scripts depend on these numbers: this test pins them. */
	ck_assert_int_eq(PS_EXIT_OK, 0);
	ck_assert_int_eq(PS_EXIT_INTERNAL, 1);
	ck_assert_int_eq(PS_EXIT_USAGE, 2);
	ck_assert_int_eq(PS_EXIT_UNREACHABLE, 3);
	ck_assert_int_eq(PS_EXIT_AUTH, 4);
	ck_assert_int_eq(PS_EXIT_BAD_INPUT, 5);
	ck_assert_int_eq(PS_EXIT_DAEMON, 6);
	ck_assert_int_eq(PS_EXIT_OUTPUT, 7);
	ck_assert_int_eq(PS_EXIT_AZURE_REFUSED, 8);
	ck_assert_int_eq(PS_EXIT_AZURE_UNREACHABLE, 9);
	ck_assert_int_eq(PS_EXIT_AZURE_UNAUTHENTICATED, 10);
	ck_assert_int_eq(PS_EXIT_THUMBPRINT_MISMATCH, 11);
	for (int i = 0; i <= 11; i++)
		ck_assert_ptr_nonnull(exit_code_describe(i));
	ck_assert_ptr_null(exit_code_describe(12));
	ck_assert_ptr_null(exit_code_describe(-1));
}
END_TEST

START_TEST(exit_code_by_status)
{
	static const struct {
		long status;
		int exit;
	} map[] = {
		{401, PS_EXIT_AUTH},      {403, PS_EXIT_AUTH},      {400, PS_EXIT_BAD_INPUT},
		{404, PS_EXIT_BAD_INPUT}, {405, PS_EXIT_BAD_INPUT}, {413, PS_EXIT_BAD_INPUT},
		{415, PS_EXIT_BAD_INPUT}, {500, PS_EXIT_DAEMON},    {503, PS_EXIT_DAEMON},
		{502, PS_EXIT_DAEMON},    {429, PS_EXIT_DAEMON},    {302, PS_EXIT_DAEMON},
		{200, PS_EXIT_DAEMON},    {418, PS_EXIT_DAEMON},
	};

	for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++)
		ck_assert_msg(exit_code_for_status(map[i].status) == map[i].exit, "HTTP %ld",
			      map[i].status);
}
END_TEST

START_TEST(exit_code_by_failure)
{
	struct daemon_error e = {0};

	ck_assert_int_eq(exit_code_for_daemon_error(&e), PS_EXIT_INTERNAL);
	e.failure = DAEMON_FAILURE_INTERNAL;
	ck_assert_int_eq(exit_code_for_daemon_error(&e), PS_EXIT_INTERNAL);
	e.failure = DAEMON_FAILURE_INPUT;
	ck_assert_int_eq(exit_code_for_daemon_error(&e), PS_EXIT_BAD_INPUT);
	e.failure = DAEMON_FAILURE_UNREACHABLE;
	ck_assert_int_eq(exit_code_for_daemon_error(&e), PS_EXIT_UNREACHABLE);
	e.failure = DAEMON_FAILURE_MALFORMED;
	ck_assert_int_eq(exit_code_for_daemon_error(&e), PS_EXIT_DAEMON);
	e.failure = DAEMON_FAILURE_STATUS;
	e.status = 403;
	ck_assert_int_eq(exit_code_for_daemon_error(&e), PS_EXIT_AUTH);
	e.status = 404;
	ck_assert_int_eq(exit_code_for_daemon_error(&e), PS_EXIT_BAD_INPUT);
	e.status = 503;
	ck_assert_int_eq(exit_code_for_daemon_error(&e), PS_EXIT_DAEMON);

	ck_assert_int_eq(exit_code_for_token_error(PS_E_NOT_FOUND), PS_EXIT_AUTH);
	ck_assert_int_eq(exit_code_for_token_error(PS_E_PERMISSIONS), PS_EXIT_AUTH);
	ck_assert_int_eq(exit_code_for_token_error(PS_E_INVALID_REQUEST), PS_EXIT_AUTH);
	ck_assert_int_eq(exit_code_for_token_error(PS_E_TOO_LARGE), PS_EXIT_AUTH);
	ck_assert_int_eq(exit_code_for_token_error(PS_E_NOMEM), PS_EXIT_INTERNAL);
	ck_assert_int_eq(exit_code_for_output_error(PS_E_IO), PS_EXIT_OUTPUT);
	ck_assert_int_eq(exit_code_for_output_error(PS_E_NOMEM), PS_EXIT_INTERNAL);
}
END_TEST

/* ---- error answers ---- */

START_TEST(error_answer_parsed)
{
	static const char body[] =
		"{\"error\": {\"code\": \"unauthorized\", \"message\": \"a valid bearer token is required\"}}";
	struct daemon_error e;

	ck_assert_int_eq(daemon_error_from_answer(401, body, strlen(body), &e), PS_E_UNAUTHORIZED);
	ck_assert_int_eq(e.failure, DAEMON_FAILURE_STATUS);
	ck_assert_int_eq(e.status, 401);
	ck_assert_str_eq(e.code, "unauthorized");
	ck_assert_str_eq(e.message, "a valid bearer token is required");
	ck_assert_int_eq(exit_code_for_daemon_error(&e), PS_EXIT_AUTH);
}
END_TEST

START_TEST(error_answer_codes)
{
	static const struct {
		long status;
		const char *code;
		int err;
	} map[] = {
		{400, "invalid_request", PS_E_INVALID_REQUEST},
		{400, "invalid_verification_code", PS_E_INVALID_CODE},
		{401, "unauthorized", PS_E_UNAUTHORIZED},
		{403, "forbidden", PS_E_FORBIDDEN},
		{404, "not_found", PS_E_NOT_FOUND},
		{405, "method_not_allowed", PS_E_METHOD},
		{413, "payload_too_large", PS_E_TOO_LARGE},
		{415, "unsupported_media_type", PS_E_MEDIA_TYPE},
		{429, "rate_limited", PS_E_RATE_LIMITED},
		{503, "token_unavailable", PS_E_TOKEN},
		{503, "audit_unavailable", PS_E_AUDIT},
		{500, "internal_error", PS_E_INTERNAL},
		{418, "teapot", PS_E_INTERNAL},
		{400, "something_new", PS_E_INVALID_REQUEST}, /* by status alone */
	};
	struct daemon_error e;
	char body[256];

	for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++) {
		snprintf(body, sizeof(body), "{\"error\": {\"code\": \"%s\", \"message\": \"m\"}}",
			 map[i].code);
		ck_assert_msg(daemon_error_from_answer(map[i].status, body, strlen(body), &e) ==
				      map[i].err,
			      "%ld %s", map[i].status, map[i].code);
		ck_assert_str_eq(e.code, map[i].code);
	}
}
END_TEST

START_TEST(error_answer_unparseable)
{
	static const char *const bodies[] = {
		"",
		"<html>Bad Gateway</html>",
		"{\"error\": {\"code\": 401, \"message\": \"m\"}}",
		"{\"error\": {\"code\": \"x\"}}",
		"{\"error\": {\"message\": \"m\"}}",
		"{\"error\": \"unauthorized\"}",
		"[\"error\"]",
		"{\"error\": {\"code\": \"a\", \"code\": \"b\", \"message\": \"m\"}}",
		"{\"error\": {\"code\": \"a\", \"message\": \"m\"}",
	};
	struct daemon_error e;

	for (size_t i = 0; i < sizeof(bodies) / sizeof(bodies[0]); i++) {
		int r = daemon_error_from_answer(502, bodies[i], strlen(bodies[i]), &e);

		ck_assert_int_eq(r, PS_E_INTERNAL);
		ck_assert_int_eq(e.failure, DAEMON_FAILURE_STATUS);
		ck_assert_int_eq(e.status, 502);
		ck_assert_str_eq(e.code, "");
		ck_assert_msg(strstr(e.message, "not an API v1 error body"), "%s", e.message);
		ck_assert_int_eq(exit_code_for_daemon_error(&e), PS_EXIT_DAEMON);
	}
	/* Without a code the status still decides: a 401 is refused auth. */
	daemon_error_from_answer(401, "", 0, &e);
	ck_assert_int_eq(exit_code_for_daemon_error(&e), PS_EXIT_AUTH);
}
END_TEST

START_TEST(error_answer_long_message_truncated)
{
	char body[4096], msg[2048];
	struct daemon_error e;

	memset(msg, 'm', sizeof(msg) - 1);
	msg[sizeof(msg) - 1] = '\0';
	snprintf(body, sizeof(body), "{\"error\": {\"code\": \"internal_error\", \"message\": \"%s\"}}",
		 msg);
	daemon_error_from_answer(500, body, strlen(body), &e);
	ck_assert_uint_eq(strlen(e.message), DAEMON_ERROR_MESSAGE_MAX - 1);
}
END_TEST

/* ---- what is printed ---- */

START_TEST(printable_replaces_controls)
{
	static const struct {
		const char *in, *out;
	} cases[] = {
		{"CN=Dev Root", "CN=Dev Root"},
		{"a\x1b[31mb", "a?[31mb"},
		{"a\r\nb\tc", "a??b?c"},
		{"x\x7fy", "x?y"},
		{"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x94\x91", "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x94\x91"},
		{"a\xc2\x85z", "a?z"},           /* U+0085, a C1 control */
		{"a\xc2\x9b" "31m", "a?31m"},    /* U+009B, CSI */
		{"\xc2\xa0", "\xc2\xa0"},        /* U+00A0 is printable */
		{"a\xffz", "a?z"},               /* not UTF-8 */
		{"a\xc0\xafz", "a??z"},          /* overlong '/' */
		{"a\xed\xa0\x80z", "a???z"},     /* a surrogate */
		{"a\xe2\x82", "a??"},            /* cut short */
		{"\xf4\x90\x80\x80", "????"},    /* past U+10FFFF */
		{"", ""},
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char *p = output_printable(cases[i].in);

		ck_assert_msg(strcmp(p, cases[i].out) == 0, "case %zu: '%s'", i, p);
		free(p);
	}
}
END_TEST

START_TEST(daemon_error_printed)
{
	struct daemon_error e = {.failure = DAEMON_FAILURE_STATUS, .status = 403};
	char *buf = NULL;
	size_t len;
	FILE *f;

	snprintf(e.code, sizeof(e.code), "forbidden");
	snprintf(e.message, sizeof(e.message), "this caller may not use that key\x1b]0;x\a");
	f = capture(&buf, &len);
	output_daemon_error(f, &e);
	e.code[0] = '\0';
	snprintf(e.message, sizeof(e.message), "popsignd's error answer is not an API v1 error body");
	e.status = 502;
	output_daemon_error(f, &e);
	daemon_error_set(&e, DAEMON_FAILURE_UNREACHABLE, "cannot reach popsignd at %s: %s",
			 "http://127.0.0.1:7717", "Connection refused");
	output_daemon_error(f, &e);
	fclose(f);
	ck_assert_str_eq(buf, "popsign: this caller may not use that key?]0;x? (forbidden, HTTP 403)\n"
			      "popsign: popsignd's error answer is not an API v1 error body (HTTP 502)\n"
			      "popsign: cannot reach popsignd at http://127.0.0.1:7717: Connection refused\n");
	free(buf);
}
END_TEST

START_TEST(keys_table_exact)
{
	static const char doc_text[] =
		"[{\"name\": \"root-ca\", \"algorithm\": \"EC-P256\", \"subject\": \"CN=Dev Root\","
		" \"sha1_thumbprint\": \"0123456789ABCDEF0123456789ABCDEF01234567\","
		" \"sha256_fingerprint\": \"ab\", \"not_before\": \"2026-01-01T00:00:00Z\","
		" \"not_after\": \"2027-01-01T00:00:00Z\", \"extra\": 1},"
		" {\"name\": \"k\", \"algorithm\": \"RSA-2048\", \"subject\": \"CN=Caf\\u00e9\\u001b[2J\","
		" \"sha1_thumbprint\": \"AA\", \"sha256_fingerprint\": \"cd\","
		" \"not_before\": \"2026-01-01T00:00:00Z\", \"not_after\": \"2026-12-31T23:59:59Z\"}]";
	json_t *keys = json_loads(doc_text, 0, NULL);
	char *buf = NULL;
	size_t len;
	FILE *f = capture(&buf, &len);

	ck_assert_ptr_nonnull(keys);
	ck_assert_int_eq(output_keys_table(f, keys), 0);
	fclose(f);
	/* "CN=Café?[2J" is 11 characters though 12 bytes: padded by characters. */
	ck_assert_str_eq(buf,
			 "NAME     ALGORITHM  SUBJECT      SHA1-THUMBPRINT                           EXPIRES\n"
			 "root-ca  EC-P256    CN=Dev Root  0123456789ABCDEF0123456789ABCDEF01234567  2027-01-01T00:00:00Z\n"
			 "k        RSA-2048   CN=Caf\xc3\xa9?[2J  AA                                        2026-12-31T23:59:59Z\n");
	free(buf);
	json_decref(keys);
}
END_TEST

START_TEST(keys_table_empty_and_bad)
{
	static const char *const bad[] = {
		"[{\"name\": \"a\"}]",
		"[1]",
		"[{\"name\": \"a\", \"algorithm\": \"x\", \"subject\": \"s\", \"sha1_thumbprint\": \"t\","
		" \"sha256_fingerprint\": \"u\", \"not_before\": \"v\", \"not_after\": 5}]",
		"{\"keys\": []}",
	};
	json_t *keys = json_array();
	char *buf = NULL;
	size_t len;
	FILE *f = capture(&buf, &len);

	ck_assert_int_eq(output_keys_table(f, keys), 0);
	json_decref(keys);
	fflush(f);
	ck_assert_str_eq(buf, "NAME  ALGORITHM  SUBJECT  SHA1-THUMBPRINT  EXPIRES\n");
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		keys = json_loads(bad[i], 0, NULL);
		ck_assert_ptr_nonnull(keys);
		ck_assert_int_eq(output_keys_table(f, keys), PS_E_INVALID_REQUEST);
		json_decref(keys);
	}
	fclose(f);
	/* Nothing printed for the refused ones. */
	ck_assert_str_eq(buf, "NAME  ALGORITHM  SUBJECT  SHA1-THUMBPRINT  EXPIRES\n");
	free(buf);
}
END_TEST

START_TEST(keys_table_write_error)
{
	json_t *keys = json_loads("[]", 0, NULL);
	FILE *f = fopen("/dev/full", "w");

	ck_assert_ptr_nonnull(f);
	ck_assert_int_eq(output_keys_table(f, keys), PS_E_IO);
	fclose(f);
	json_decref(keys);
}
END_TEST

START_TEST(json_text_pretty_in_order)
{
	json_t *doc = json_loads("{\"z\": 1, \"a\": [\"x\"]}", 0, NULL);
	char *text = NULL;

	ck_assert_int_eq(output_json_text(doc, &text), 0);
	ck_assert_str_eq(text, "{\n  \"z\": 1,\n  \"a\": [\n    \"x\"\n  ]\n}\n");
	free(text);
	json_decref(doc);
}
END_TEST

/* ---- files written whole or not at all ---- */

START_TEST(write_file_mode_and_content)
{
	char *dir = make_tmpdir(), path[256], *text;
	struct stat st;

	umask(077);
	snprintf(path, sizeof(path), "%s/cert.pem", dir);
	ck_assert_int_eq(output_write_file(path, "hello\n", 6, 0644, 0), 0);
	ck_assert_int_eq(stat(path, &st), 0);
	/* fchmod, not the umask, decides the mode. */
	ck_assert_int_eq(st.st_mode & 07777, 0644);
	text = read_text(path);
	ck_assert_str_eq(text, "hello\n");
	free(text);
	snprintf(path, sizeof(path), "%s/token", dir);
	ck_assert_int_eq(output_write_file(path, "abc", 3, 0600, 0), 0);
	ck_assert_int_eq(stat(path, &st), 0);
	ck_assert_int_eq(st.st_mode & 07777, 0600);
	ck_assert_int_eq(st.st_size, 3);
	/* No temporary file left beside them. */
	ck_assert_uint_eq(dir_entries(dir), 2);
	umask(027);
	ck_assert_int_eq(output_default_mode(), 0640);
	umask(022);
	ck_assert_int_eq(output_default_mode(), 0644);
	tmpdir_done(dir);
}
END_TEST

START_TEST(write_file_replace_or_refuse)
{
	char *dir = make_tmpdir(), path[256], *text;

	snprintf(path, sizeof(path), "%s/out", dir);
	write_text(path, "old");
	errno = 0;
	ck_assert_int_eq(output_write_file(path, "new", 3, 0600, 0), PS_E_IO);
	ck_assert_int_eq(errno, EEXIST);
	text = read_text(path);
	ck_assert_str_eq(text, "old");
	free(text);
	ck_assert_uint_eq(dir_entries(dir), 1);
	ck_assert_int_eq(output_write_file(path, "new", 3, 0600, OUTPUT_REPLACE), 0);
	text = read_text(path);
	ck_assert_str_eq(text, "new");
	free(text);
	ck_assert_uint_eq(dir_entries(dir), 1);
	tmpdir_done(dir);
}
END_TEST

START_TEST(write_file_symlink_not_followed)
{
	char *dir = make_tmpdir(), link_path[256], target[256];
	struct stat st;

	snprintf(link_path, sizeof(link_path), "%s/link", dir);
	snprintf(target, sizeof(target), "%s/target", dir);
	ck_assert_int_eq(symlink(target, link_path), 0);
	/* A dangling link counts as an existing file... */
	errno = 0;
	ck_assert_int_eq(output_write_file(link_path, "x", 1, 0600, 0), PS_E_IO);
	ck_assert_int_eq(errno, EEXIST);
	ck_assert_int_eq(lstat(target, &st), -1);
	/* ...and replacing it replaces the link, never writes through it. */
	ck_assert_int_eq(output_write_file(link_path, "x", 1, 0600, OUTPUT_REPLACE), 0);
	ck_assert_int_eq(lstat(link_path, &st), 0);
	ck_assert(S_ISREG(st.st_mode));
	ck_assert_int_eq(lstat(target, &st), -1);
	tmpdir_done(dir);
}
END_TEST

START_TEST(write_file_failure_leaves_nothing)
{
	char *dir = make_tmpdir(), path[256], inner[300];

	/* The target is a non-empty directory: the final rename fails. */
	snprintf(path, sizeof(path), "%s/d", dir);
	ck_assert_int_eq(mkdir(path, 0700), 0);
	snprintf(inner, sizeof(inner), "%s/keep", path);
	write_text(inner, "keep");
	errno = 0;
	ck_assert_int_eq(output_write_file(path, "data", 4, 0600, OUTPUT_REPLACE), PS_E_IO);
	ck_assert(errno == EISDIR || errno == ENOTEMPTY || errno == EEXIST);
	ck_assert_int_eq(output_write_file(path, "data", 4, 0600, 0), PS_E_IO);
	ck_assert_uint_eq(dir_entries(dir), 1); /* no temporary file left */
	ck_assert_uint_eq(dir_entries(path), 1);
	/* A directory that does not exist. */
	snprintf(path, sizeof(path), "%s/missing/out", dir);
	errno = 0;
	ck_assert_int_eq(output_write_file(path, "data", 4, 0600, 0), PS_E_IO);
	ck_assert_int_eq(errno, ENOENT);
	/* Paths that name no file. */
	snprintf(path, sizeof(path), "%s/", dir);
	errno = 0;
	ck_assert_int_eq(output_write_file(path, "data", 4, 0600, 0), PS_E_IO);
	ck_assert_int_eq(errno, EISDIR);
	ck_assert_int_eq(output_write_file("", "data", 4, 0600, 0), PS_E_IO);
	snprintf(path, sizeof(path), "%s/..", dir);
	ck_assert_int_eq(output_write_file(path, "data", 4, 0600, 0), PS_E_IO);
	ck_assert_uint_eq(dir_entries(dir), 1);
	tmpdir_done(dir);
}
END_TEST

START_TEST(write_file_relative_path)
{
	char *dir = make_tmpdir(), *text;

	ck_assert_int_eq(chdir(dir), 0);
	ck_assert_int_eq(output_write_file("plain", "p", 1, 0600, 0), 0);
	text = read_text("plain");
	ck_assert_str_eq(text, "p");
	free(text);
	ck_assert_uint_eq(dir_entries(dir), 1);
	tmpdir_done(dir);
}
END_TEST

START_TEST(write_stdout_error)
{
	ck_assert_ptr_nonnull(freopen("/dev/full", "w", stdout));
	ck_assert_int_eq(output_write_stdout("x", 1), PS_E_IO);
}
END_TEST

/* ---- bearer tokens ---- */

START_TEST(token_generated_fresh_lowercase_hex)
{
	char a[BEARER_TOKEN_HEX_LEN + 1], b[BEARER_TOKEN_HEX_LEN + 1];

	ck_assert_int_eq(bearer_generate(a), 0);
	ck_assert_int_eq(bearer_generate(b), 0);
	ck_assert_uint_eq(strlen(a), 64);
	ck_assert_uint_eq(strspn(a, "0123456789abcdef"), 64);
	ck_assert_str_ne(a, b);
	ck_assert(bearer_token_valid(a, strlen(a)));
}
END_TEST

START_TEST(token_hash_known_answer)
{
	char hex[BEARER_SHA256_HEX_LEN + 1];

	ck_assert_int_eq(bearer_sha256_hex("abc", 3, hex), 0);
	ck_assert_str_eq(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}
END_TEST

/* The token_sha256 line token-new prints is what popsignd's auth accepts
 * for that token in an Authorization header, and nothing else. */
START_TEST(token_hash_matches_daemon_auth)
{
	char token[BEARER_TOKEN_HEX_LEN + 1], hex[BEARER_SHA256_HEX_LEN + 1], header[128];
	struct config_client client = {.name = (char *)"c", .has_token = true, .all_keys = true};
	struct config cfg = {.clients = &client, .n_clients = 1};
	const struct config_client *who = NULL;

	ck_assert_int_eq(BEARER_TOKEN_MAX, AUTH_TOKEN_MAX);
	ck_assert_int_eq(bearer_generate(token), 0);
	ck_assert_int_eq(bearer_sha256_hex(token, strlen(token), hex), 0);
	ck_assert_int_eq(hex_decode(hex, client.token_sha256, 32), 0);
	snprintf(header, sizeof(header), "Bearer %s", token);
	ck_assert_int_eq(auth_authenticate(&cfg, header, NULL, &who), 0);
	ck_assert_ptr_eq(who, &client);
	/* With the file's newline the hash would differ: the text is what counts. */
	ck_assert_int_eq(bearer_sha256_hex(token, strlen(token) - 1, hex), 0);
	ck_assert_int_eq(hex_decode(hex, client.token_sha256, 32), 0);
	ck_assert_int_eq(auth_authenticate(&cfg, header, NULL, &who), PS_E_UNAUTHORIZED);
}
END_TEST

START_TEST(token_syntax)
{
	static const char *const good[] = {"a", "abc123", "a-b.c_d~e+f/g", "abc=", "abc==", "Zz09"};
	static const char *const bad[] = {"", "=", "=abc", "a b", "a\tb", "a\nb", "a\rb", "ab=c",
					  "a\"b", "a,b", "a:b", "caf\xc3\xa9", "a\x7f"};
	char long_token[BEARER_TOKEN_MAX + 2];

	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
		ck_assert_msg(bearer_token_valid(good[i], strlen(good[i])), "'%s'", good[i]);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		ck_assert_msg(!bearer_token_valid(bad[i], strlen(bad[i])), "'%s'", bad[i]);
	ck_assert(!bearer_token_valid("ab\0c", 4));
	ck_assert(!bearer_token_valid(NULL, 0));
	memset(long_token, 'a', sizeof(long_token));
	ck_assert(bearer_token_valid(long_token, BEARER_TOKEN_MAX));
	ck_assert(!bearer_token_valid(long_token, BEARER_TOKEN_MAX + 1));
}
END_TEST

START_TEST(token_paths)
{
	char *path = NULL;
	bool is_default = false;

	unsetenv(BEARER_ENV_FILE);
	setenv("XDG_CONFIG_HOME", "/cfg", 1);
	setenv("HOME", "/home/u", 1);
	ck_assert_int_eq(bearer_resolve_path(NULL, &path, &is_default), 0);
	ck_assert_str_eq(path, "/cfg/popsign/token");
	ck_assert(is_default);
	free(path);
	/* A relative XDG_CONFIG_HOME is ignored, as the spec says. */
	setenv("XDG_CONFIG_HOME", "cfg", 1);
	ck_assert_int_eq(bearer_default_path(&path), 0);
	ck_assert_str_eq(path, "/home/u/.config/popsign/token");
	free(path);
	unsetenv("XDG_CONFIG_HOME");
	ck_assert_int_eq(bearer_default_path(&path), 0);
	ck_assert_str_eq(path, "/home/u/.config/popsign/token");
	free(path);
	setenv(BEARER_ENV_FILE, "", 1);
	ck_assert_int_eq(bearer_resolve_path(NULL, &path, &is_default), 0);
	ck_assert_str_eq(path, "/home/u/.config/popsign/token");
	free(path);
	setenv(BEARER_ENV_FILE, "/env/token", 1);
	ck_assert_int_eq(bearer_resolve_path(NULL, &path, &is_default), 0);
	ck_assert_str_eq(path, "/env/token");
	ck_assert(!is_default);
	free(path);
	ck_assert_int_eq(bearer_resolve_path("opt-token", &path, &is_default), 0);
	ck_assert_str_eq(path, "opt-token");
	ck_assert(!is_default);
	free(path);
}
END_TEST

START_TEST(token_parent_dirs)
{
	char *dir = make_tmpdir(), path[256], sub[256];
	struct stat st;

	snprintf(path, sizeof(path), "%s/a/b/token", dir);
	ck_assert_int_eq(bearer_make_parent_dirs(path), 0);
	snprintf(sub, sizeof(sub), "%s/a", dir);
	ck_assert_int_eq(stat(sub, &st), 0);
	ck_assert_int_eq(st.st_mode & 07777, 0700);
	snprintf(sub, sizeof(sub), "%s/a/b", dir);
	ck_assert_int_eq(stat(sub, &st), 0);
	ck_assert_int_eq(st.st_mode & 07777, 0700);
	ck_assert_int_eq(stat(path, &st), -1); /* the file itself is not made */
	ck_assert_int_eq(bearer_make_parent_dirs(path), 0); /* existing ones are fine */
	/* A file where a directory should be. */
	snprintf(sub, sizeof(sub), "%s/f", dir);
	write_text(sub, "x");
	snprintf(path, sizeof(path), "%s/f/token", dir);
	ck_assert_int_eq(bearer_make_parent_dirs(path), 0); /* mkdir says EEXIST... */
	ck_assert_int_eq(output_write_file(path, "t", 1, 0600, 0), PS_E_IO); /* ...writing fails */
	tmpdir_done(dir);
}
END_TEST

/* ---- input checks ---- */

START_TEST(key_names)
{
	static const char *const good[] = {"root-ca", "a", "A.b_c-9", "..", "-x"};
	static const char *const bad[] = {"", "a/b", "a b", "a%2f", "a?b", "a#b", "caf\xc3\xa9",
					  "a\n", "a:b", "a=b"};
	char name[DAEMON_KEY_NAME_MAX + 2];
	struct daemon_error e;

	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
		ck_assert_msg(daemon_key_name_valid(good[i]), "'%s'", good[i]);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		ck_assert_msg(!daemon_key_name_valid(bad[i]), "'%s'", bad[i]);
		ck_assert_int_eq(daemon_check_key(bad[i], &e), PS_E_INVALID_REQUEST);
		ck_assert_int_eq(e.failure, DAEMON_FAILURE_INPUT);
		ck_assert_int_eq(exit_code_for_daemon_error(&e), PS_EXIT_BAD_INPUT);
	}
	ck_assert(!daemon_key_name_valid(NULL));
	memset(name, 'k', sizeof(name));
	name[DAEMON_KEY_NAME_MAX] = '\0';
	ck_assert(daemon_key_name_valid(name));
	name[DAEMON_KEY_NAME_MAX] = 'k';
	name[DAEMON_KEY_NAME_MAX + 1] = '\0';
	ck_assert(!daemon_key_name_valid(name));
}
END_TEST

START_TEST(sign_input)
{
	static const char *const bad_codes[] = {"", "ab/c", "ab=", "ab c", "ab\r\n", "caf\xc3\xa9",
						"0123456789012345678901234567890123456789012345678901234567890123X"};
	struct daemon_error e;
	char ctx[DAEMON_CONTEXT_MAX + 2];

	ck_assert_int_eq(daemon_check_sign_input("root-ca", CODE48, NULL, &e), 0);
	for (size_t i = 0; i < sizeof(bad_codes) / sizeof(bad_codes[0]); i++) {
		ck_assert_int_eq(daemon_check_sign_input("root-ca", bad_codes[i], NULL, &e),
				 PS_E_INVALID_CODE);
		ck_assert_int_eq(exit_code_for_daemon_error(&e), PS_EXIT_BAD_INPUT);
		ck_assert_msg(strstr(e.message, "a verification code is 1 to 64 characters"), "%s",
			      e.message);
	}
	ck_assert_int_eq(daemon_check_sign_input("root-ca", NULL, NULL, &e), PS_E_INVALID_CODE);
	ck_assert_int_eq(daemon_check_sign_input("bad/key", CODE48, NULL, &e),
			 PS_E_INVALID_REQUEST);
	ck_assert_int_eq(exit_code_for_daemon_error(&e), PS_EXIT_BAD_INPUT);
	/* The context later issues send: printable ASCII, 1 to 512. */
	ck_assert_int_eq(daemon_check_sign_input("k", CODE48, "/subscriptions/x/certificates/c", &e),
			 0);
	ck_assert_int_eq(daemon_check_sign_input("k", CODE48, "", &e), PS_E_INVALID_REQUEST);
	ck_assert_int_eq(daemon_check_sign_input("k", CODE48, "a\nb", &e), PS_E_INVALID_REQUEST);
	memset(ctx, 'c', sizeof(ctx));
	ctx[DAEMON_CONTEXT_MAX] = '\0';
	ck_assert_int_eq(daemon_check_sign_input("k", CODE48, ctx, &e), 0);
	ctx[DAEMON_CONTEXT_MAX] = 'c';
	ctx[DAEMON_CONTEXT_MAX + 1] = '\0';
	ck_assert_int_eq(daemon_check_sign_input("k", CODE48, ctx, &e), PS_E_INVALID_REQUEST);
	ck_assert_int_eq(e.failure, DAEMON_FAILURE_INPUT);
}
END_TEST

START_TEST(url_forms)
{
	static const struct {
		const char *in, *out;
	} good[] = {
		{"http://127.0.0.1:7717", "http://127.0.0.1:7717"},
		{"http://127.0.0.1:7717/", "http://127.0.0.1:7717"},
		{"HTTP://localhost", "http://localhost"},
		{"http://[::1]:7717", "http://[::1]:7717"},
		{"unix:/run/popsign/popsignd.sock", "unix:/run/popsign/popsignd.sock"},
	};
	static const char *const bad[] = {
		"https://127.0.0.1:7717", "ftp://x", "unix:run/popsign.sock", "unix:", "127.0.0.1:7717",
		"http://", "http://u:p@127.0.0.1", "http://u@127.0.0.1", "http://127.0.0.1/v1",
		"http://127.0.0.1/?a=b", "http://127.0.0.1/#f", "http://127.0.0.1:99999", "",
	};
	const char *why;
	char *out;

	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		ck_assert_msg(daemon_api_url_check(good[i].in, &out, &why) == 0, "%s", good[i].in);
		ck_assert_str_eq(out, good[i].out);
		free(out);
	}
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		why = NULL;
		out = NULL;
		ck_assert_msg(daemon_api_url_check(bad[i], &out, &why) == PS_E_INVALID_REQUEST, "%s",
			      bad[i]);
		ck_assert_ptr_nonnull(why);
		ck_assert_ptr_null(out);
	}
}
END_TEST

START_TEST(api_new_refuses)
{
	struct secret bad = {.data = (char *)"to ken", .len = 6};
	struct daemon_api *api = NULL;
	struct daemon_error e;

	ck_assert_int_eq(daemon_api_new("https://x", &test_token, &api, &e), PS_E_INVALID_REQUEST);
	ck_assert_int_eq(e.failure, DAEMON_FAILURE_INPUT);
	ck_assert_int_eq(daemon_api_new("http://x", &bad, &api, &e), PS_E_INVALID_REQUEST);
	ck_assert_ptr_null(api);
	ck_assert_int_eq(daemon_api_new("http://x:1/", &test_token, &api, &e), 0);
	ck_assert_str_eq(daemon_api_url(api), "http://x:1");
	daemon_api_free(api);
	daemon_api_free(NULL);
}
END_TEST

START_TEST(pem_to_der)
{
	char *pem = make_cert_pem("ABC"), *two;
	const unsigned char *p;
	unsigned char *der = NULL;
	size_t len = 0;
	X509 *x;

	ck_assert_int_eq(daemon_cert_pem_to_der(pem, &der, &len), 0);
	p = der;
	x = d2i_X509(NULL, &p, (long)len);
	ck_assert_ptr_nonnull(x);
	ck_assert_ptr_eq(p, der + len);
	X509_free(x);
	OPENSSL_free(der);
	ck_assert_int_eq(asprintf(&two, "%s%s", pem, pem), (int)(2 * strlen(pem)));
	der = NULL;
	ck_assert_int_eq(daemon_cert_pem_to_der(two, &der, &len), PS_E_INVALID_REQUEST);
	ck_assert_int_eq(daemon_cert_pem_to_der("not a certificate", &der, &len),
			 PS_E_INVALID_REQUEST);
	ck_assert_int_eq(daemon_cert_pem_to_der("", &der, &len), PS_E_INVALID_REQUEST);
	ck_assert_ptr_null(der);
	free(two);
	free(pem);
}
END_TEST

START_TEST(key_info_members)
{
	json_t *entry = json_loads(key_json, 0, NULL);
	struct daemon_key_info k = {0};

	ck_assert_int_eq(daemon_key_info_parse(entry, &k), 0);
	ck_assert_str_eq(k.name, "root-ca");
	ck_assert_str_eq(k.sha1_thumbprint, "0123456789ABCDEF0123456789ABCDEF01234567");
	ck_assert_str_eq(k.not_after, "2027-01-01T00:00:00Z");
	json_object_set_new(entry, "subject", json_integer(1));
	memset(&k, 0, sizeof(k));
	ck_assert_int_eq(daemon_key_info_parse(entry, &k), PS_E_INVALID_REQUEST);
	ck_assert_ptr_null(k.name); /* untouched on failure */
	json_object_del(entry, "subject");
	ck_assert_int_eq(daemon_key_info_parse(entry, &k), PS_E_INVALID_REQUEST);
	ck_assert_int_eq(daemon_key_info_parse(NULL, &k), PS_E_INVALID_REQUEST);
	json_decref(entry);
}
END_TEST

/* ---- the API calls over a real socket ---- */

START_TEST(api_keys)
{
	struct daemon_error e = {0};
	struct daemon_api *api;
	json_t *doc = NULL;
	struct fake f;
	char body[1024];

	snprintf(body, sizeof(body), "{\"keys\": [%s]}", key_json);
	fake_start(&f, 200, "application/json", body);
	api = fake_api(&f);
	ck_assert_int_eq(daemon_api_keys(api, &doc, &e), 0);
	fake_finish(&f);
	ck_assert_str_eq(json_string_value(json_object_get(
				 json_array_get(json_object_get(doc, "keys"), 0), "name")),
			 "root-ca");
	ck_assert_ptr_nonnull(strstr(f.request, "GET /v1/keys HTTP/1.1\r\n"));
	ck_assert_ptr_nonnull(strstr(f.request, "\r\nAuthorization: Bearer tok-en_1.2~3+4/5==\r\n"));
	ck_assert_ptr_nonnull(strstr(f.request, "\r\nAccept: application/json\r\n"));
	json_decref(doc);
	daemon_api_free(api);
}
END_TEST

START_TEST(api_keys_malformed)
{
	static const char *const bodies[] = {"{\"keys\": {}}", "{}", "[]", "not json",
					     "{\"keys\": [{\"name\": \"x\"}]}"};

	for (size_t i = 0; i < sizeof(bodies) / sizeof(bodies[0]); i++) {
		struct daemon_error e = {0};
		struct daemon_api *api;
		json_t *doc = NULL;
		struct fake f;

		fake_start(&f, 200, "application/json", bodies[i]);
		api = fake_api(&f);
		ck_assert_int_lt(daemon_api_keys(api, &doc, &e), 0);
		fake_finish(&f);
		ck_assert_ptr_null(doc);
		ck_assert_int_eq(e.failure, DAEMON_FAILURE_MALFORMED);
		ck_assert_int_eq(exit_code_for_daemon_error(&e), PS_EXIT_DAEMON);
		daemon_api_free(api);
	}
}
END_TEST

START_TEST(api_key_info)
{
	struct daemon_key_info *info = NULL;
	struct daemon_error e = {0};
	struct daemon_api *api;
	struct fake f;

	fake_start(&f, 200, "application/json", key_json);
	api = fake_api(&f);
	ck_assert_int_eq(daemon_api_key_info(api, "root-ca", &info, &e), 0);
	fake_finish(&f);
	ck_assert_ptr_nonnull(strstr(f.request, "GET /v1/keys/root-ca HTTP/1.1\r\n"));
	ck_assert_str_eq(info->sha1_thumbprint, "0123456789ABCDEF0123456789ABCDEF01234567");
	daemon_key_info_free(info);
	daemon_api_free(api);
	/* An answer about another key is not an answer. */
	info = NULL;
	fake_start(&f, 200, "application/json", key_json);
	api = fake_api(&f);
	ck_assert_int_eq(daemon_api_key_info(api, "other", &info, &e), PS_E_INVALID_REQUEST);
	fake_finish(&f);
	ck_assert_ptr_null(info);
	ck_assert_int_eq(e.failure, DAEMON_FAILURE_MALFORMED);
	daemon_api_free(api);
}
END_TEST

START_TEST(api_ca_cert)
{
	char *pem = make_cert_pem("Dev Root"), *got = NULL;
	struct daemon_error e = {0};
	struct daemon_api *api;
	struct fake f;

	fake_start(&f, 200, "application/x-pem-file", pem);
	api = fake_api(&f);
	ck_assert_int_eq(daemon_api_ca_cert(api, "root-ca", &got, &e), 0);
	fake_finish(&f);
	ck_assert_ptr_nonnull(strstr(f.request, "GET /v1/keys/root-ca/certificate HTTP/1.1\r\n"));
	ck_assert_ptr_nonnull(strstr(f.request, "\r\nAccept: application/x-pem-file\r\n"));
	ck_assert_str_eq(got, pem);
	free(got);
	got = NULL;
	daemon_api_free(api);
	fake_start(&f, 200, "application/x-pem-file", "-----BEGIN CERTIFICATE-----\nxx\n");
	api = fake_api(&f);
	ck_assert_int_eq(daemon_api_ca_cert(api, "root-ca", &got, &e), PS_E_INVALID_REQUEST);
	fake_finish(&f);
	ck_assert_ptr_null(got);
	ck_assert_int_eq(exit_code_for_daemon_error(&e), PS_EXIT_DAEMON);
	daemon_api_free(api);
	/* A key name goes into the path as it is: "/../" is not squashed away. */
	fake_start(&f, 200, "application/x-pem-file", pem);
	api = fake_api(&f);
	ck_assert_int_eq(daemon_api_ca_cert(api, "..", &got, &e), 0);
	fake_finish(&f);
	ck_assert_ptr_nonnull(strstr(f.request, "GET /v1/keys/../certificate HTTP/1.1\r\n"));
	free(got);
	daemon_api_free(api);
	free(pem);
}
END_TEST

static char *sign_answer(const char *code, const char *pem)
{
	json_t *doc = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:s}", "key", "root-ca",
				"verification_code", code, "certificate", pem, "serial", "0a",
				"not_before", "2026-01-01T00:00:00Z", "not_after",
				"2026-01-02T00:00:00Z", "sha256_fingerprint", "ff");
	char *text = json_dumps(doc, 0);

	json_decref(doc);
	return text;
}

START_TEST(api_sign)
{
	char *pem = make_cert_pem(CODE48), *answer = sign_answer(CODE48, pem);
	struct daemon_verification *v = NULL;
	struct daemon_error e = {0};
	struct daemon_api *api;
	struct fake f;

	fake_start(&f, 201, "application/json", answer);
	api = fake_api(&f);
	ck_assert_int_eq(daemon_api_sign(api, "root-ca", CODE48, NULL, &v, &e), 0);
	fake_finish(&f);
	ck_assert_ptr_nonnull(strstr(f.request, "POST /v1/keys/root-ca/verification-certificates "
						"HTTP/1.1\r\n"));
	ck_assert_ptr_nonnull(strstr(f.request, "\r\nContent-Type: application/json\r\n"));
	ck_assert_ptr_nonnull(strstr(f.request, "\r\n\r\n{\"verification_code\":\"" CODE48 "\"}"));
	ck_assert_str_eq(v->certificate, pem);
	ck_assert_str_eq(v->serial, "0a");
	daemon_verification_free(v);
	/* The context goes along when given. */
	v = NULL;
	daemon_api_free(api);
	fake_start(&f, 201, "application/json", answer);
	api = fake_api(&f);
	ck_assert_int_eq(daemon_api_sign(api, "root-ca", CODE48, "ctx/1", &v, &e), 0);
	fake_finish(&f);
	ck_assert_ptr_nonnull(
		strstr(f.request, "{\"verification_code\":\"" CODE48 "\",\"context\":\"ctx/1\"}"));
	daemon_verification_free(v);
	daemon_api_free(api);
	free(answer);
	free(pem);
}
END_TEST

START_TEST(api_sign_answer_checked)
{
	char *pem = make_cert_pem(CODE48);
	char *answers[] = {
		sign_answer("OTHERCODE", pem),     /* a certificate for another code */
		sign_answer(CODE48, "not a PEM"),  /* no certificate */
		strdup("{\"certificate\": 1}"),
	};
	long statuses[] = {201, 201, 201};

	for (size_t i = 0; i < sizeof(answers) / sizeof(answers[0]); i++) {
		struct daemon_verification *v = NULL;
		struct daemon_error e = {0};
		struct daemon_api *api;
		struct fake f;

		fake_start(&f, (int)statuses[i], "application/json", answers[i]);
		api = fake_api(&f);
		ck_assert_int_lt(daemon_api_sign(api, "root-ca", CODE48, NULL, &v, &e), 0);
		fake_finish(&f);
		ck_assert_ptr_null(v);
		ck_assert_int_eq(e.failure, DAEMON_FAILURE_MALFORMED);
		ck_assert_int_eq(exit_code_for_daemon_error(&e), PS_EXIT_DAEMON);
		daemon_api_free(api);
		free(answers[i]);
	}
	free(pem);
}
END_TEST

START_TEST(api_sign_refused_locally)
{
	struct daemon_verification *v = NULL;
	struct daemon_error e = {0};
	struct daemon_api *api = NULL;

	/* Port 1 on loopback: nothing is sent, so nothing needs to listen. */
	ck_assert_int_eq(daemon_api_new("http://127.0.0.1:1", &test_token, &api, &e), 0);
	ck_assert_int_eq(daemon_api_sign(api, "root-ca", "bad/code", NULL, &v, &e),
			 PS_E_INVALID_CODE);
	ck_assert_int_eq(e.failure, DAEMON_FAILURE_INPUT);
	ck_assert_int_eq(daemon_api_sign(api, "../x", CODE48, NULL, &v, &e), PS_E_INVALID_REQUEST);
	ck_assert_int_eq(e.failure, DAEMON_FAILURE_INPUT);
	ck_assert_ptr_null(v);
	daemon_api_free(api);
}
END_TEST

START_TEST(api_error_statuses)
{
	static const struct {
		int status;
		const char *code;
		int exit;
	} cases[] = {
		{401, "unauthorized", PS_EXIT_AUTH},
		{403, "forbidden", PS_EXIT_AUTH},
		{404, "not_found", PS_EXIT_BAD_INPUT},
		{400, "invalid_verification_code", PS_EXIT_BAD_INPUT},
		{415, "unsupported_media_type", PS_EXIT_BAD_INPUT},
		{503, "token_unavailable", PS_EXIT_DAEMON},
		{500, "internal_error", PS_EXIT_DAEMON},
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct daemon_verification *v = NULL;
		struct daemon_error e = {0};
		struct daemon_api *api;
		char body[256];
		struct fake f;

		snprintf(body, sizeof(body), "{\"error\": {\"code\": \"%s\", \"message\": \"msg %d\"}}",
			 cases[i].code, cases[i].status);
		fake_start(&f, cases[i].status, "application/json", body);
		api = fake_api(&f);
		ck_assert_int_lt(daemon_api_sign(api, "root-ca", CODE48, NULL, &v, &e), 0);
		fake_finish(&f);
		ck_assert_int_eq(e.failure, DAEMON_FAILURE_STATUS);
		ck_assert_int_eq(e.status, cases[i].status);
		ck_assert_str_eq(e.code, cases[i].code);
		ck_assert_int_eq(exit_code_for_daemon_error(&e), cases[i].exit);
		daemon_api_free(api);
	}
}
END_TEST

START_TEST(api_unexpected_status)
{
	struct daemon_error e = {0};
	struct daemon_api *api;
	json_t *doc = NULL;
	struct fake f;
	char *answer = strdup("HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:1/v1/keys\r\n"
			      "Content-Length: 0\r\nConnection: close\r\n\r\n");

	/* A redirect is not followed: it is an answer API v1 never gives. */
	fake_start_raw(&f, answer, strlen(answer));
	api = fake_api(&f);
	ck_assert_int_lt(daemon_api_keys(api, &doc, &e), 0);
	fake_finish(&f);
	ck_assert_int_eq(e.failure, DAEMON_FAILURE_MALFORMED);
	ck_assert_int_eq(e.status, 302);
	ck_assert_int_eq(exit_code_for_daemon_error(&e), PS_EXIT_DAEMON);
	daemon_api_free(api);
}
END_TEST

START_TEST(api_unreachable)
{
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t sl = sizeof(sa);
	struct daemon_error e = {0};
	struct daemon_api *api = NULL;
	json_t *doc = NULL;
	char url[64];
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	/* A port that was just free and is bound but not listening: refused. */
	ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&sa, &sl), 0);
	snprintf(url, sizeof(url), "http://127.0.0.1:%d", ntohs(sa.sin_port));
	ck_assert_int_eq(daemon_api_new(url, &test_token, &api, &e), 0);
	ck_assert_int_eq(daemon_api_keys(api, &doc, &e), PS_E_IO);
	close(fd);
	ck_assert_int_eq(e.failure, DAEMON_FAILURE_UNREACHABLE);
	ck_assert_int_eq(exit_code_for_daemon_error(&e), PS_EXIT_UNREACHABLE);
	ck_assert_msg(strstr(e.message, "cannot reach popsignd at http://127.0.0.1:"), "%s",
		      e.message);
	ck_assert_ptr_null(strstr(e.message, test_token.data));
	daemon_api_free(api);
}
END_TEST

START_TEST(api_answer_too_large)
{
	size_t body_len = DAEMON_API_RESPONSE_MAX + 1;
	char *answer = malloc(body_len + 200);
	int head = snprintf(answer, 200,
			    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
			    "Connection: close\r\n\r\n");
	struct daemon_error e = {0};
	struct daemon_api *api;
	json_t *doc = NULL;
	struct fake f;

	/* No Content-Length: the cap has to hold while the body streams in. */
	memset(answer + head, ' ', body_len);
	fake_start_raw(&f, answer, (size_t)head + body_len);
	api = fake_api(&f);
	ck_assert_int_eq(daemon_api_keys(api, &doc, &e), PS_E_TOO_LARGE);
	fake_finish(&f);
	ck_assert_int_eq(e.failure, DAEMON_FAILURE_MALFORMED);
	ck_assert_int_eq(exit_code_for_daemon_error(&e), PS_EXIT_DAEMON);
	daemon_api_free(api);
}
END_TEST

START_TEST(api_not_http)
{
	char *answer = strdup("SSH-2.0-OpenSSH_9.2\r\n");
	struct daemon_error e = {0};
	struct daemon_api *api;
	json_t *doc = NULL;
	struct fake f;

	fake_start_raw(&f, answer, strlen(answer));
	api = fake_api(&f);
	ck_assert_int_lt(daemon_api_keys(api, &doc, &e), 0);
	fake_finish(&f);
	ck_assert_int_eq(e.failure, DAEMON_FAILURE_MALFORMED);
	ck_assert_int_eq(exit_code_for_daemon_error(&e), PS_EXIT_DAEMON);
	daemon_api_free(api);
}
END_TEST

START_TEST(api_ignores_proxy_settings)
{
	struct daemon_error e = {0};
	struct daemon_api *api;
	json_t *doc = NULL;
	struct fake f;

	/* The token must go straight to popsignd, never through a proxy. */
	setenv("http_proxy", "http://127.0.0.1:1", 1);
	setenv("HTTP_PROXY", "http://127.0.0.1:1", 1);
	setenv("ALL_PROXY", "http://127.0.0.1:1", 1);
	fake_start(&f, 200, "application/json", "{\"keys\": []}");
	api = fake_api(&f);
	ck_assert_int_eq(daemon_api_keys(api, &doc, &e), 0);
	fake_finish(&f);
	ck_assert_ptr_nonnull(strstr(f.request, "GET /v1/keys HTTP/1.1\r\n"));
	json_decref(doc);
	daemon_api_free(api);
}
END_TEST

static Suite *client_suite(void)
{
	Suite *s = suite_create("client");
	TCase *tc = tcase_create("output");

	tcase_add_test(tc, exit_table_is_fixed);
	tcase_add_test(tc, exit_code_by_status);
	tcase_add_test(tc, exit_code_by_failure);
	tcase_add_test(tc, error_answer_parsed);
	tcase_add_test(tc, error_answer_codes);
	tcase_add_test(tc, error_answer_unparseable);
	tcase_add_test(tc, error_answer_long_message_truncated);
	tcase_add_test(tc, printable_replaces_controls);
	tcase_add_test(tc, daemon_error_printed);
	tcase_add_test(tc, keys_table_exact);
	tcase_add_test(tc, keys_table_empty_and_bad);
	tcase_add_test(tc, keys_table_write_error);
	tcase_add_test(tc, json_text_pretty_in_order);
	tcase_add_test(tc, write_file_mode_and_content);
	tcase_add_test(tc, write_file_replace_or_refuse);
	tcase_add_test(tc, write_file_symlink_not_followed);
	tcase_add_test(tc, write_file_failure_leaves_nothing);
	tcase_add_test(tc, write_file_relative_path);
	tcase_add_test(tc, write_stdout_error);
	tcase_add_test(tc, token_generated_fresh_lowercase_hex);
	tcase_add_test(tc, token_hash_known_answer);
	tcase_add_test(tc, token_hash_matches_daemon_auth);
	tcase_add_test(tc, token_syntax);
	tcase_add_test(tc, token_paths);
	tcase_add_test(tc, token_parent_dirs);
	tcase_add_test(tc, key_names);
	tcase_add_test(tc, sign_input);
	tcase_add_test(tc, url_forms);
	tcase_add_test(tc, api_new_refuses);
	tcase_add_test(tc, pem_to_der);
	tcase_add_test(tc, key_info_members);
	tcase_add_test(tc, api_keys);
	tcase_add_test(tc, api_keys_malformed);
	tcase_add_test(tc, api_key_info);
	tcase_add_test(tc, api_ca_cert);
	tcase_add_test(tc, api_sign);
	tcase_add_test(tc, api_sign_answer_checked);
	tcase_add_test(tc, api_sign_refused_locally);
	tcase_add_test(tc, api_error_statuses);
	tcase_add_test(tc, api_unexpected_status);
	tcase_add_test(tc, api_unreachable);
	tcase_add_test(tc, api_answer_too_large);
	tcase_add_test(tc, api_not_http);
	tcase_add_test(tc, api_ignores_proxy_settings);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	int failed;

	/* Before any test forks, as popsign's main does. */
	if (transport_global_init() < 0)
		return 1;
	failed = check_run(client_suite());
	transport_global_cleanup();
	return failed == 0 ? 0 : 1;
}
