/* config_load and its parsers: every accepted form, every refusal with its
 * exact "FILE:LINE: message", defaults, and the shipped example config. */
#include <check.h>
#include <arpa/inet.h>
#include <errno.h>
#include <ini.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "error.h"
#include "uri.h"
#include "check_run.h"

#define MODULE "module-path=/usr/lib/softhsm/libsofthsm2.so"
#define GOOD_URI "pkcs11:token=t;object=k;type=private?" MODULE "&pin-source=file:/etc/p/k.pin"
#define KEY_K "[key k]\nuri = " GOOD_URI "\n"
#define HASH_A "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
#define HASH_B "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100"

static char dir[PATH_MAX];
static char path[PATH_MAX + 32];
static char err[CONFIG_ERROR_MAX];

static void setup(void)
{
	snprintf(dir, sizeof(dir), "%s/test_config.XXXXXX",
		 getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
	ck_assert_ptr_nonnull(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/popsignd.conf", dir);
}

static void teardown(void)
{
	unlink(path);
	rmdir(dir);
}

static void write_file(const char *text, size_t len)
{
	FILE *f = fopen(path, "w");

	ck_assert_ptr_nonnull(f);
	ck_assert_uint_eq(fwrite(text, 1, len, f), len);
	ck_assert_int_eq(fclose(f), 0);
}

/* Loads text; on success the config is returned, on failure NULL and r. */
static struct config *load_len(const char *text, size_t len, int *ret_r)
{
	struct config *c = NULL;

	write_file(text, len);
	memset(err, 'x', sizeof(err));
	*ret_r = config_load(path, &c, err);
	return c;
}

static struct config *load_ok(const char *text)
{
	int r;
	struct config *c = load_len(text, strlen(text), &r);

	ck_assert_msg(r == 0, "refused (%d): %s\n--- config:\n%s", r, err, text);
	ck_assert_ptr_nonnull(c);
	return c;
}

/* Asserts that text is refused with PS_E_CONFIG and exactly
 * "PATH:line: <fmt...>". */
__attribute__((format(printf, 4, 5)))
static void refused_len(const char *text, size_t len, unsigned line, const char *fmt, ...)
{
	char want[sizeof(path) + CONFIG_ERROR_MAX + 32], msg[CONFIG_ERROR_MAX];
	struct config *sentinel = (struct config *)0x1, *c = sentinel;
	va_list ap;
	int r;

	write_file(text, len);
	r = config_load(path, &c, err);
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	snprintf(want, sizeof(want), "%s:%u: %s", path, line, msg);
	ck_assert_msg(r == PS_E_CONFIG, "accepted (%d)\n--- config:\n%s", r, text);
	ck_assert_ptr_eq(c, sentinel);
	ck_assert_msg(strcmp(err, want) == 0, "got  \"%s\"\nwant \"%s\"", err, want);
}

#define refused(text, line, ...) refused_len((text), strlen(text), (line), __VA_ARGS__)

/* The reason key_uri_parse gives for text: the message must carry it. */
static const char *uri_why(const char *text)
{
	struct key_uri *u = NULL;
	const char *why = NULL;

	ck_assert_int_eq(key_uri_parse(text, &u, &why), PS_E_CONFIG);
	ck_assert_ptr_nonnull(why);
	return why;
}

/* --- config_parse_duration ------------------------------------------------ */

static unsigned duration_ok(const char *text)
{
	unsigned v = 0;

	ck_assert_msg(config_parse_duration(text, &v) == 0, "'%s' refused", text);
	return v;
}

START_TEST(duration_good)
{
	ck_assert_uint_eq(duration_ok("1m"), 60);
	ck_assert_uint_eq(duration_ok("90m"), 5400);
	ck_assert_uint_eq(duration_ok("24h"), 86400);
	ck_assert_uint_eq(duration_ok("1d"), 86400);
	ck_assert_uint_eq(duration_ok("30d"), 30 * 86400);
	ck_assert_uint_eq(duration_ok("720h"), 30 * 86400);
	ck_assert_uint_eq(duration_ok("43200m"), 30 * 86400);
}
END_TEST

START_TEST(duration_bad)
{
	static const char *const bad[] = {
		"0m", "0h", "0d", "31d", "721h", "43201m", "720h+1m", "1", "1s", "1w", "1y",
		"1.5h", "-1d", "+1d", " 1d", "1d ", "1 d", "d", "m", "", "1D", "1M", "0x1d",
		"1e1d", "99999999999999999999d", "18446744073709551617m", "4294967297m",
		"1dd", "1h1m", "\t1d", "1d\n",
	};

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		unsigned v = 12345;

		ck_assert_msg(config_parse_duration(bad[i], &v) == PS_E_CONFIG, "'%s' accepted",
			      bad[i]);
		ck_assert_uint_eq(v, 12345);
	}
	ck_assert_int_eq(config_parse_duration(NULL, &(unsigned){ 0 }), PS_E_CONFIG);
}
END_TEST

/* --- config_parse_listen -------------------------------------------------- */

static struct config_listen listen_ok(const char *text)
{
	struct config_listen l;
	const char *why = NULL;

	memset(&l, 0xa5, sizeof(l));
	ck_assert_msg(config_parse_listen(text, &l, &why) == 0, "'%s' refused: %s", text,
		      why ? why : "(null)");
	ck_assert_str_eq(l.text, text);
	return l;
}

static void assert_ipv4(const struct config_listen *l, const char *addr, unsigned port)
{
	const struct sockaddr_in *sin = (const struct sockaddr_in *)&l->addr;
	char buf[INET_ADDRSTRLEN];

	ck_assert_int_eq(sin->sin_family, AF_INET);
	ck_assert_uint_eq(l->addr_len, sizeof(*sin));
	ck_assert_uint_eq(ntohs(sin->sin_port), port);
	ck_assert_ptr_nonnull(inet_ntop(AF_INET, &sin->sin_addr, buf, sizeof(buf)));
	ck_assert_str_eq(buf, addr);
}

START_TEST(listen_good)
{
	struct config_listen l;
	const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)&l.addr;

	l = listen_ok("127.0.0.1:7717");
	assert_ipv4(&l, "127.0.0.1", 7717);
	l = listen_ok("127.1.2.3:1");
	assert_ipv4(&l, "127.1.2.3", 1);
	l = listen_ok("127.255.255.255:65535");
	assert_ipv4(&l, "127.255.255.255", 65535);
	l = listen_ok("localhost:0");
	assert_ipv4(&l, "127.0.0.1", 0);
	l = listen_ok("LocalHost:80");
	assert_ipv4(&l, "127.0.0.1", 80);

	l = listen_ok("[::1]:7717");
	ck_assert_int_eq(sin6->sin6_family, AF_INET6);
	ck_assert_uint_eq(l.addr_len, sizeof(*sin6));
	ck_assert_uint_eq(ntohs(sin6->sin6_port), 7717);
	ck_assert(IN6_IS_ADDR_LOOPBACK(&sin6->sin6_addr));
	ck_assert_uint_eq(sin6->sin6_flowinfo, 0);
	ck_assert_uint_eq(sin6->sin6_scope_id, 0);
	l = listen_ok("[0:0:0:0:0:0:0:1]:0");
	ck_assert(IN6_IS_ADDR_LOOPBACK(&sin6->sin6_addr));
}
END_TEST

static void listen_bad(const char *text, const char *why_want)
{
	struct config_listen l, before;
	const char *why = NULL;

	memset(&l, 0x5a, sizeof(l));
	memcpy(&before, &l, sizeof(l)); /* padding too: compared bytewise below */
	ck_assert_msg(config_parse_listen(text, &l, &why) == PS_E_CONFIG, "'%s' accepted", text);
	/* NOLINTNEXTLINE(bugprone-suspicious-memory-comparison): bytewise on purpose */
	ck_assert_msg(memcmp(&l, &before, sizeof(l)) == 0, "'%s': *ret changed", text);
	ck_assert_ptr_nonnull(why);
	ck_assert_msg(strcmp(why, why_want) == 0, "'%s': got \"%s\", want \"%s\"", text, why,
		      why_want);
}

#define NOT_LOOPBACK "not a loopback address; popsignd only listens on loopback (127.0.0.0/8 or [::1])"

START_TEST(listen_refused)
{
	const char *port = "the port must be a number from 0 to 65535";

	listen_bad("0.0.0.0:1", NOT_LOOPBACK);
	listen_bad("10.0.0.1:1", NOT_LOOPBACK);
	listen_bad("128.0.0.1:1", NOT_LOOPBACK);
	listen_bad("[::]:1", NOT_LOOPBACK);
	listen_bad("[::ffff:127.0.0.1]:1", NOT_LOOPBACK);
	listen_bad("[fe80::1]:1", NOT_LOOPBACK);
	listen_bad("127.0.0.1:65536", port);
	listen_bad("127.0.0.1:99999999999999999999999", port);
	listen_bad("127.0.0.1:7a", port);
	listen_bad("127.0.0.1:-1", port);
	listen_bad("127.0.0.1:+1", port);
	listen_bad("127.0.0.1: 1", port);
	listen_bad("127.0.0.1:1 ", port);
	listen_bad("127.0.0.1:", "missing port");
	listen_bad(":7717", "missing host");
	listen_bad("[]:7717", "missing host");
	listen_bad("127.0.0.1", "missing :PORT");
	listen_bad("", "missing :PORT");
	listen_bad("::1:7717", "an IPv6 address needs brackets: [::1]:PORT");
	listen_bad("[::1]7717", "an IPv6 address is written [::1]:PORT");
	listen_bad("[::1", "an IPv6 address is written [::1]:PORT");
	listen_bad("[127.0.0.1]:1", "not an IPv6 address");
	listen_bad("127.1:1", "not an IPv4 address, [IPv6] address or localhost");
	listen_bad("127.0.0.01:1", "not an IPv4 address, [IPv6] address or localhost");
	listen_bad("example.com:1", "not an IPv4 address, [IPv6] address or localhost");
	listen_bad(" 127.0.0.1:1", "not an IPv4 address, [IPv6] address or localhost");
	listen_bad("localhost.:1", "not an IPv4 address, [IPv6] address or localhost");
	{
		/* 127 characters fit in config_listen.text, 128 do not. */
		char longest[160] = "127.0.0.1:";

		memset(longest + 10, '0', 116);
		strcpy(longest + 126, "1");
		ck_assert_uint_eq(strlen(longest), 127);
		assert_ipv4((struct config_listen[]){ listen_ok(longest) }, "127.0.0.1", 1);
		strcpy(longest + 126, "01");
		listen_bad(longest, "too long");
	}
}
END_TEST

/* --- names ---------------------------------------------------------------- */

START_TEST(names)
{
	char n64[66];

	memset(n64, 'a', 64);
	n64[64] = '\0';
	ck_assert(config_name_valid(n64));
	ck_assert(config_name_valid("a"));
	ck_assert(config_name_valid("Root-CA_2.v1"));
	ck_assert(config_name_valid("..."));
	n64[64] = 'a';
	n64[65] = '\0';
	ck_assert(!config_name_valid(n64));
	ck_assert(!config_name_valid(""));
	ck_assert(!config_name_valid(NULL));
	ck_assert(!config_name_valid("a b"));
	ck_assert(!config_name_valid("a/b"));
	ck_assert(!config_name_valid("a*"));
	ck_assert(!config_name_valid("*"));
	ck_assert(!config_name_valid("caf\xc3\xa9"));
	ck_assert(!config_name_valid("a\n"));
}
END_TEST

/* --- whole files: accepted ------------------------------------------------ */

START_TEST(full_config)
{
	struct config *c = load_ok(
		"# comment\n"
		"; another\n"
		"[daemon]\n"
		"listen = 127.0.0.1:7717 , [::1]:7718,localhost:0\n"
		"workers = 3\n"
		"validity = 12h\n"
		"\n"
		"[key root-ca]\n"
		"uri = " GOOD_URI "\n"
		"certificate = /etc/popsign/root-ca.pem\n"
		"[key other]\n"
		"uri = " GOOD_URI "\n"
		"[client provisioning]\n"
		"token_sha256 = " HASH_A "\n"
		"keys = root-ca, other\n"
		"[client admin]\n"
		"token_sha256 = FFEEDDCCBBAA99887766554433221100FFEEDDCCBBAA99887766554433221100\n"
		"keys = *\n");
	static const uint8_t b[32] = { 0xff, 0xee, 0xdd, 0xcc, 0xbb, 0xaa, 0x99, 0x88,
				       0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, 0x00,
				       0xff, 0xee, 0xdd, 0xcc, 0xbb, 0xaa, 0x99, 0x88,
				       0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, 0x00 };

	ck_assert_str_eq(c->path, path);
	ck_assert_uint_eq(c->n_listen, 3);
	ck_assert_str_eq(c->listen[0].text, "127.0.0.1:7717");
	ck_assert_str_eq(c->listen[1].text, "[::1]:7718");
	ck_assert_str_eq(c->listen[2].text, "localhost:0");
	ck_assert_uint_eq(c->workers, 3);
	ck_assert_uint_eq(c->validity, 12 * 3600);
	ck_assert_uint_eq(c->n_keys, 2);
	ck_assert_str_eq(c->keys[0].name, "root-ca");
	ck_assert_str_eq(c->keys[0].uri, GOOD_URI);
	ck_assert_str_eq(c->keys[0].certificate, "/etc/popsign/root-ca.pem");
	ck_assert_uint_eq(c->keys[0].line, 8);
	ck_assert_str_eq(c->keys[1].name, "other");
	ck_assert_ptr_null(c->keys[1].certificate);
	ck_assert_uint_eq(c->keys[1].line, 11);
	ck_assert_uint_eq(c->n_clients, 2);
	ck_assert_str_eq(c->clients[0].name, "provisioning");
	ck_assert_uint_eq(c->clients[0].line, 13);
	ck_assert(c->clients[0].has_token);
	ck_assert_uint_eq(c->clients[0].token_sha256[0], 0x00);
	ck_assert_uint_eq(c->clients[0].token_sha256[1], 0x11);
	ck_assert_uint_eq(c->clients[0].token_sha256[31], 0xff);
	ck_assert(!c->clients[0].all_keys);
	ck_assert_uint_eq(c->clients[0].n_keys, 2);
	ck_assert_str_eq(c->clients[0].keys[0], "root-ca");
	ck_assert_str_eq(c->clients[0].keys[1], "other");
	ck_assert_str_eq(c->clients[1].name, "admin");
	ck_assert(c->clients[1].all_keys);
	ck_assert_uint_eq(c->clients[1].n_keys, 0);
	ck_assert_mem_eq(c->clients[1].token_sha256, b, 32);
	ck_assert_ptr_eq(config_find_key(c, "other"), &c->keys[1]);
	ck_assert_ptr_eq(config_find_key(c, "root-ca"), &c->keys[0]);
	ck_assert_ptr_null(config_find_key(c, "root"));
	ck_assert_ptr_null(config_find_key(c, "nope"));
	ck_assert_ptr_null(config_find_key(c, NULL));
	ck_assert_ptr_null(config_find_key(NULL, "other"));
	config_free(c);
}
END_TEST

START_TEST(defaults)
{
	struct config *c = load_ok(KEY_K);
	const struct sockaddr_in *sin = (const struct sockaddr_in *)&c->listen[0].addr;
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);
	unsigned want = cpus < 1 ? 2 : cpus > CONFIG_WORKERS_MAX / 2 ? CONFIG_WORKERS_MAX
								 : 2 * (unsigned)cpus;

	ck_assert_uint_eq(c->n_listen, 1);
	ck_assert_str_eq(c->listen[0].text, CONFIG_DEFAULT_LISTEN);
	ck_assert_int_eq(sin->sin_family, AF_INET);
	ck_assert_uint_eq(ntohs(sin->sin_port), 7717);
	ck_assert_uint_eq(ntohl(sin->sin_addr.s_addr), 0x7f000001);
	ck_assert_uint_eq(c->workers, want);
	ck_assert_uint_eq(c->validity, CONFIG_VALIDITY_DEFAULT);
	/* No [client]: allowed (nobody can sign; popsignd warns). */
	ck_assert_uint_eq(c->n_clients, 0);
	ck_assert_uint_eq(c->n_keys, 1);
	ck_assert_ptr_null(c->keys[0].certificate);
	config_free(c);
	config_free(NULL);
}
END_TEST

START_TEST(workers_bounds)
{
	struct config *c = load_ok("[daemon]\nworkers = 1\n" KEY_K);

	ck_assert_uint_eq(c->workers, 1);
	config_free(c);
	c = load_ok("[daemon]\nworkers = 256\n" KEY_K);
	ck_assert_uint_eq(c->workers, 256);
	config_free(c);
}
END_TEST

/* Keys may be named before their [key] section; names keep all 64 bytes
 * even though inih itself cuts section names at 49. */
START_TEST(keys_forward_reference_and_long_names)
{
	char n64[65], text[1024];
	struct config *c;

	memset(n64, 'n', 64);
	n64[64] = '\0';
	snprintf(text, sizeof(text),
		 "[client %s]\ntoken_sha256 = " HASH_A "\nkeys = later,%s\n"
		 "[key %s]\nuri = " GOOD_URI "\n"
		 "[key later]\nuri = " GOOD_URI "\n", n64, n64, n64);
	c = load_ok(text);
	ck_assert_str_eq(c->clients[0].name, n64);
	ck_assert_str_eq(c->keys[0].name, n64);
	ck_assert_str_eq(c->keys[1].name, "later");
	ck_assert_uint_eq(c->clients[0].n_keys, 2);
	ck_assert_str_eq(c->clients[0].keys[0], "later");
	ck_assert_str_eq(c->clients[0].keys[1], n64);
	config_free(c);
}
END_TEST

/* Sections differing only after inih's 49-byte cut are still distinct. */
START_TEST(long_names_distinct)
{
	char a[65], b[65], text[1024];
	struct config *c;

	memset(a, 'x', 64);
	a[64] = '\0';
	memcpy(b, a, sizeof(b));
	b[63] = 'y';
	snprintf(text, sizeof(text), "[key %s]\nuri = " GOOD_URI "\n[key %s]\nuri = " GOOD_URI
		 "\ncertificate = /b.pem\n", a, b);
	c = load_ok(text);
	ck_assert_uint_eq(c->n_keys, 2);
	ck_assert_ptr_null(c->keys[0].certificate);
	ck_assert_str_eq(c->keys[1].certificate, "/b.pem");
	config_free(c);
}
END_TEST

START_TEST(layout_tolerated)
{
	/* CRLF line ends, a byte order mark, indentation (not taken as a
	 * continuation), inline comments, blanks in headers, no final newline. */
	struct config *c = load_ok("\xef\xbb\xbf[daemon]\r\n"
				   "  workers = 3\r\n"
				   "\tvalidity = 2h ; two hours\r\n"
				   "[ key   k ] ; the key\r\n"
				   "uri=" GOOD_URI "\r\n"
				   "   ; indented comment\r\n"
				   "[client c]\n"
				   "token_sha256 = " HASH_A "\n"
				   "keys = k");

	ck_assert_uint_eq(c->workers, 3);
	ck_assert_uint_eq(c->validity, 7200);
	ck_assert_str_eq(c->keys[0].name, "k");
	ck_assert_str_eq(c->keys[0].uri, GOOD_URI);
	ck_assert_uint_eq(c->keys[0].line, 4);
	ck_assert_uint_eq(c->clients[0].n_keys, 1);
	config_free(c);
}
END_TEST

/* 16 addresses: the most a line of inih's length can hold, and the cap. */
START_TEST(listen_many)
{
	char text[512] = "[daemon]\nlisten=";
	struct config *c;

	for (int i = 0; i < CONFIG_LISTEN_MAX; i++)
		strcat(text, i ? ",127.0.0.1:0" : "127.0.0.1:0");
	strcat(text, "\n" KEY_K);
	c = load_ok(text);
	ck_assert_uint_eq(c->n_listen, CONFIG_LISTEN_MAX);
	config_free(c);
}
END_TEST

/* The line length limit is inih's buffer: the longest line fitting it is
 * read, one more byte is refused rather than split in two. */
START_TEST(line_length_limit)
{
	const int max = INI_MAX_LINE - 1;
	char *text = malloc(2 * INI_MAX_LINE + 256);
	struct config *c;
	size_t n;

	ck_assert_ptr_nonnull(text);
	n = (size_t)sprintf(text, KEY_K "certificate = /");
	memset(text + n, 'a', (size_t)max - strlen("certificate = /"));
	n += (size_t)max - strlen("certificate = /");
	strcpy(text + n, "\n");
	c = load_ok(text);
	ck_assert_uint_eq(strlen(c->keys[0].certificate), (size_t)max - strlen("certificate = "));
	config_free(c);

	text[n] = 'a';
	strcpy(text + n + 1, "\n");
	refused(text, 3, "line too long (at most %d characters)", max);
	free(text);
}
END_TEST

START_TEST(huge_line_and_file_limit)
{
	size_t size = 1024 * 1024;
	char *text = malloc(size + 2);
	struct config *c;
	int r;

	ck_assert_ptr_nonnull(text);
	/* One line of a megabyte. */
	memset(text, '#', size);
	refused_len(text, size, 1, "line too long (at most %d characters)", INI_MAX_LINE - 1);

	/* Exactly 1 MiB is read; one byte more is refused. */
	strcpy(text, KEY_K);
	for (size_t i = strlen(KEY_K); i < size; i++)
		text[i] = (i % 64 == 63) ? '\n' : '#';
	text[size - 1] = '\n';
	c = load_len(text, size, &r);
	ck_assert_msg(r == 0, "%s", err);
	config_free(c);
	text[size] = '\n';
	refused_len(text, size + 1, 0, "larger than 1 MiB");
	free(text);
}
END_TEST

START_TEST(example_config_loads)
{
	/* Found through this file's own path, relative to the build directory
	 * the compiler ran in (the test's working directory or its parent). */
	static const char suffix[] = "tests/unit/test_config.c";
	char root[PATH_MAX], conf[PATH_MAX + 64], exe[PATH_MAX];
	const char *candidates[2] = { ".", NULL };
	struct config *c = NULL;
	size_t n = strlen(__FILE__) - strlen(suffix);
	ssize_t len = readlink("/proc/self/exe", exe, sizeof(exe) - 1);

	ck_assert(strlen(__FILE__) > strlen(suffix) || strcmp(__FILE__, suffix) == 0);
	if (len > 0) {
		exe[len] = '\0';
		*strrchr(exe, '/') = '\0';   /* BUILD/tests */
		strcat(exe, "/..");
		candidates[1] = exe;
	}
	for (size_t i = 0; i < 2 && !c; i++) {
		if (!candidates[i])
			continue;
		/* cppcheck-suppress knownConditionTrueFalse ; varies with the build */
		if (__FILE__[0] == '/')
			snprintf(root, sizeof(root), "%.*s", (int)n, __FILE__);
		else
			snprintf(root, sizeof(root), "%s/%.*s", candidates[i], (int)n, __FILE__);
		snprintf(conf, sizeof(conf), "%sconf/popsignd.conf", root);
		if (access(conf, R_OK) == 0)
			ck_assert_msg(config_load(conf, &c, err) == 0, "%s", err);
	}
	ck_assert_msg(c, "conf/popsignd.conf not found from %s", __FILE__);
	ck_assert_uint_eq(c->n_listen, 1);
	ck_assert_str_eq(c->listen[0].text, "127.0.0.1:7717");
	ck_assert_uint_eq(c->validity, 86400);
	ck_assert_uint_eq(c->n_keys, 1);
	ck_assert_str_eq(c->keys[0].name, "root-ca");
	ck_assert_ptr_nonnull(strstr(c->keys[0].uri, "pin-source=file:/etc/popsign/root-ca.pin"));
	ck_assert_uint_eq(c->n_clients, 1);
	ck_assert_str_eq(c->clients[0].name, "provisioning");
	ck_assert_uint_eq(c->clients[0].n_keys, 1);
	config_free(c);
}
END_TEST

/* --- whole files: refused ------------------------------------------------- */

START_TEST(file_problems)
{
	struct config *sentinel = (struct config *)0x1, *c = sentinel;
	char want[sizeof(path) + 64];

	ck_assert_int_eq(config_load(path, &c, err), PS_E_CONFIG);
	snprintf(want, sizeof(want), "%s:0: cannot open: %s", path, strerror(ENOENT));
	ck_assert_str_eq(err, want);
	ck_assert_ptr_eq(c, sentinel);

	ck_assert_int_eq(config_load(dir, &c, err), PS_E_CONFIG);
	snprintf(want, sizeof(want), "%s:0: not a regular file", dir);
	ck_assert_str_eq(err, want);
	ck_assert_ptr_eq(c, sentinel);

	/* A FIFO is refused, not waited on. */
	ck_assert_int_eq(mkfifo(path, 0600), 0);
	ck_assert_int_eq(config_load(path, &c, err), PS_E_CONFIG);
	snprintf(want, sizeof(want), "%s:0: not a regular file", path);
	ck_assert_str_eq(err, want);
	unlink(path);

	refused("", 0, "no [key NAME] section: popsignd needs at least one key");
	refused("# only comments\n[daemon]\nworkers = 2\n", 0,
		"no [key NAME] section: popsignd needs at least one key");
	refused("[client c]\ntoken_sha256 = " HASH_A "\nkeys = *\n", 0,
		"no [key NAME] section: popsignd needs at least one key");
}
END_TEST

START_TEST(bytes_refused)
{
	static const char nul[] = KEY_K "# a\0b\n";

	refused_len(nul, sizeof(nul) - 1, 3, "NUL byte in the line");
	refused_len("\0", 1, 1, "NUL byte in the line");
}
END_TEST

START_TEST(syntax)
{
	refused("[daemon]\nlisten\n" KEY_K, 2, "expected 'name = value', '[section]' or a comment");
	/* inih also takes ':' for '=': this line names a setting "listen 127.0.0.1". */
	refused("[daemon]\nlisten 127.0.0.1:0\n" KEY_K, 2, "unknown key 'listen 127.0.0.1' in [daemon]");
	/* inih's complaint is the earlier one: it wins over ours. */
	refused("[daemon]\nnonsense\nworkers = 0\n" KEY_K, 2,
		"expected 'name = value', '[section]' or a comment");
	/* Ours is the earlier one: parsing stops there. */
	refused("[daemon]\nworkers = 0\nnonsense\n" KEY_K, 2,
		"workers must be a whole number from 1 to 256, not '0'");
	refused(KEY_K "nonsense\n", 3, "expected 'name = value', '[section]' or a comment");
	refused("listen = 127.0.0.1:0\n" KEY_K, 1,
		"'listen' outside any section ([daemon], [key NAME] or [client NAME])");
}
END_TEST

START_TEST(sections)
{
	refused(KEY_K "[foo]\n", 3,
		"unknown section [foo] (expected [daemon], [key NAME] or [client NAME])");
	refused(KEY_K "[]\n", 3,
		"unknown section [] (expected [daemon], [key NAME] or [client NAME])");
	refused(KEY_K "[keys k2]\n", 3,
		"unknown section [keys k2] (expected [daemon], [key NAME] or [client NAME])");
	refused(KEY_K "[Daemon]\n", 3,
		"unknown section [Daemon] (expected [daemon], [key NAME] or [client NAME])");
	refused(KEY_K "[key]\n", 3, "section [key] needs a name: [key NAME]");
	refused(KEY_K "[key   ]\n", 3, "section [key] needs a name: [key NAME]");
	refused(KEY_K "[client]\n", 3, "section [client] needs a name: [client NAME]");
	refused(KEY_K "[daemon x]\n", 3, "section [daemon] takes no name");
	refused(KEY_K "[key a/b]\n", 3,
		"invalid key name 'a/b': use 1 to 64 of A-Z, a-z, 0-9, '.', '_', '-'");
	refused(KEY_K "[key a b]\n", 3,
		"invalid key name 'a b': use 1 to 64 of A-Z, a-z, 0-9, '.', '_', '-'");
	refused(KEY_K "[client *]\n", 3,
		"invalid client name '*': use 1 to 64 of A-Z, a-z, 0-9, '.', '_', '-'");
	refused(KEY_K "[key "
		"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa]\n", 3,
		"invalid key name '"
		"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
		"': use 1 to 64 of A-Z, a-z, 0-9, '.', '_', '-'");
	refused(KEY_K "[key a\n", 3, "section header without ']'");
	refused(KEY_K "[key a] x\n", 3, "unexpected text after ']'");
	refused(KEY_K "[key a]]\n", 3, "unexpected text after ']'");
	refused("[daemon]\n" KEY_K "[daemon]\n", 4, "duplicate section [daemon] (first at line 1)");
	refused(KEY_K "\n" KEY_K, 4, "duplicate section [key k] (first at line 1)");
	refused(KEY_K "[client c]\ntoken_sha256 = " HASH_A "\nkeys = *\n"
		"[client c]\ntoken_sha256 = " HASH_B "\nkeys = *\n", 6,
		"duplicate section [client c] (first at line 3)");
}
END_TEST

START_TEST(unknown_and_duplicate_keys)
{
	refused("[daemon]\nx = 1\n" KEY_K, 2, "unknown key 'x' in [daemon]");
	refused("[daemon]\nWorkers = 1\n" KEY_K, 2, "unknown key 'Workers' in [daemon]");
	refused("[daemon]\nuri = " GOOD_URI "\n" KEY_K, 2, "unknown key 'uri' in [daemon]");
	refused(KEY_K "listen = 127.0.0.1:0\n", 3, "unknown key 'listen' in [key k]");
	refused(KEY_K "[client c]\ntoken = abc\n", 4, "unknown key 'token' in [client c]");
	refused(KEY_K "= 1\n", 3, "unknown key '' in [key k]");
	refused("[daemon]\nworkers = 1\nvalidity = 1d\nworkers = 2\n" KEY_K, 4,
		"duplicate key 'workers' in [daemon]");
	refused("[daemon]\nlisten = 127.0.0.1:0\nlisten = 127.0.0.1:0\n" KEY_K, 3,
		"duplicate key 'listen' in [daemon]");
	refused(KEY_K "uri = " GOOD_URI "\n", 3, "duplicate key 'uri' in [key k]");
	refused(KEY_K "certificate = /a\ncertificate = /a\n", 4,
		"duplicate key 'certificate' in [key k]");
	refused(KEY_K "[client c]\ntoken_sha256 = " HASH_A "\ntoken_sha256 = " HASH_A "\n", 5,
		"duplicate key 'token_sha256' in [client c]");
	refused(KEY_K "[client c]\nkeys = k\ntoken_sha256 = " HASH_A "\nkeys = k\n", 6,
		"duplicate key 'keys' in [client c]");
}
END_TEST

#define ADDR_OK "[daemon]\nlisten = 127.0.0.1:1, %s\n" KEY_K

START_TEST(daemon_values)
{
	char text[1024];

	refused("[daemon]\nlisten = 0.0.0.0:7717\n" KEY_K, 2,
		"bad listen address '0.0.0.0:7717': " NOT_LOOPBACK);
	snprintf(text, sizeof(text), ADDR_OK, "[::]:7717");
	refused(text, 2, "bad listen address '[::]:7717': " NOT_LOOPBACK);
	refused("[daemon]\nlisten = 127.0.0.1:7a\n" KEY_K, 2,
		"bad listen address '127.0.0.1:7a': the port must be a number from 0 to 65535");
	refused("[daemon]\nlisten =\n" KEY_K, 2, "empty address in listen");
	refused("[daemon]\nlisten = 127.0.0.1:1,\n" KEY_K, 2, "empty address in listen");
	refused("[daemon]\nlisten = 127.0.0.1:1,,[::1]:2\n" KEY_K, 2, "empty address in listen");
	refused("[daemon]\nlisten = , 127.0.0.1:1\n" KEY_K, 2, "empty address in listen");
	refused("[daemon]\nlisten = 127.0.0.1:7717, localhost:7717\n" KEY_K, 2,
		"listen address 'localhost:7717' given twice");
	refused("[daemon]\nlisten = [::1]:7, 127.0.0.1:7 ,[::1]:7\n" KEY_K, 2,
		"listen address '[::1]:7' given twice");
	{
		char addr[160] = "127.0.0.1:";

		memset(addr + 10, '0', 117);
		strcpy(addr + 127, "1");
		snprintf(text, sizeof(text), ADDR_OK, addr);
		refused(text, 2, "bad listen address '%s': too long", addr);
	}
	refused("[daemon]\nworkers = 0\n" KEY_K, 2,
		"workers must be a whole number from 1 to 256, not '0'");
	refused("[daemon]\nworkers = 257\n" KEY_K, 2,
		"workers must be a whole number from 1 to 256, not '257'");
	refused("[daemon]\nworkers = -1\n" KEY_K, 2,
		"workers must be a whole number from 1 to 256, not '-1'");
	refused("[daemon]\nworkers = 4x\n" KEY_K, 2,
		"workers must be a whole number from 1 to 256, not '4x'");
	refused("[daemon]\nworkers =\n" KEY_K, 2,
		"workers must be a whole number from 1 to 256, not ''");
	refused("[daemon]\nworkers = 99999999999999999999999\n" KEY_K, 2,
		"workers must be a whole number from 1 to 256, not '99999999999999999999999'");
	refused("[daemon]\nvalidity = 31d\n" KEY_K, 2,
		"validity must be Nm, Nh or Nd (N a whole number >= 1), at most 30d, not '31d'");
	refused("[daemon]\nvalidity = 10\n" KEY_K, 2,
		"validity must be Nm, Nh or Nd (N a whole number >= 1), at most 30d, not '10'");
	refused("[daemon]\nvalidity = 1d # a day\n" KEY_K, 2,
		"validity must be Nm, Nh or Nd (N a whole number >= 1), at most 30d, "
		"not '1d # a day'");
}
END_TEST

START_TEST(security_values)
{
	struct config *c;
	const struct sockaddr_un *sun;

	c = load_ok("[daemon]\nlisten = unix:/run/popsign/p.sock, 127.0.0.1:0\n"
		    "socket_mode = 0600\nsocket_group = 0\naudit_log = /var/log/p/audit.log\n"
		    "rate = 120/m\nburst = 5\nmax_connections = 64\nconnection_timeout = 30\n"
		    "max_header_size = 8192\nrequest_timeout = 2\n" KEY_K
		    "[client u]\nuid = 0\ngid = root\nkeys = *\n"
		    "[client t]\ntoken_sha256 = " HASH_A "\nkeys = k\nrate = 1/s\nburst = 2\n");
	ck_assert(c->listen[0].is_unix);
	sun = (const struct sockaddr_un *)&c->listen[0].addr;
	ck_assert_int_eq(sun->sun_family, AF_UNIX);
	ck_assert_str_eq(sun->sun_path, "/run/popsign/p.sock");
	ck_assert(!c->listen[1].is_unix);
	ck_assert_uint_eq(c->socket_mode, 0600);
	ck_assert(c->has_socket_group);
	ck_assert_uint_eq(c->socket_group, 0);
	ck_assert_str_eq(c->audit_log, "/var/log/p/audit.log");
	ck_assert(c->rate > 1.99 && c->rate < 2.01);
	ck_assert_uint_eq(c->burst, 5);
	ck_assert_uint_eq(c->max_connections, 64);
	ck_assert_uint_eq(c->connection_timeout, 30);
	ck_assert_uint_eq(c->max_header_size, 8192);
	ck_assert_uint_eq(c->request_timeout, 2);
	ck_assert(c->clients[0].has_uid && c->clients[0].uid == 0);
	ck_assert(c->clients[0].has_gid && c->clients[0].gid == 0);
	ck_assert(!c->clients[0].has_token);
	ck_assert(c->clients[0].rate > 1.99 && c->clients[0].rate < 2.01); /* the daemon's */
	ck_assert_uint_eq(c->clients[0].burst, 5);
	ck_assert(c->clients[1].rate > 0.99 && c->clients[1].rate < 1.01);
	ck_assert_uint_eq(c->clients[1].burst, 2);
	config_free(c);

	c = load_ok(KEY_K);
	ck_assert_ptr_null(c->audit_log);
	ck_assert_uint_eq(c->socket_mode, CONFIG_SOCKET_MODE_DEFAULT);
	ck_assert_uint_eq(c->max_connections, CONFIG_CONNECTIONS_DEFAULT);
	ck_assert_uint_eq(c->request_timeout, CONFIG_REQUEST_TIMEOUT_DEFAULT);
	config_free(c);

	refused("[daemon]\nlisten = unix:run/p.sock\n" KEY_K, 2, "bad listen address "
		"'unix:run/p.sock': a Unix socket path must be absolute: unix:/run/popsign/popsignd.sock");
	refused("[daemon]\nlisten = unix:/a, unix:/a\n" KEY_K, 2,
		"listen address 'unix:/a' given twice");
	refused("[daemon]\nsocket_mode = 0999\n" KEY_K, 2,
		"socket_mode must be an octal mode such as 0660, not '0999'");
	refused("[daemon]\nsocket_mode = 01777\n" KEY_K, 2,
		"socket_mode must be an octal mode such as 0660, not '01777'");
	refused("[daemon]\nsocket_group = no-such-group-here\n" KEY_K, 2,
		"socket_group: no such group 'no-such-group-here'");
	refused("[daemon]\naudit_log = audit.log\n" KEY_K, 2,
		"audit_log must be an absolute path, not 'audit.log'");
	refused("[daemon]\nrate = 10\n" KEY_K, 2, "rate must be N/s, N/m or N/h (N a whole "
		"number from 1 to 1000000), not '10'");
	refused("[daemon]\nrate = 0/s\n" KEY_K, 2, "rate must be N/s, N/m or N/h (N a whole "
		"number from 1 to 1000000), not '0/s'");
	refused("[daemon]\nrate = 5/d\n" KEY_K, 2, "rate must be N/s, N/m or N/h (N a whole "
		"number from 1 to 1000000), not '5/d'");
	refused("[daemon]\nburst = 0\n" KEY_K, 2,
		"burst must be a whole number from 1 to 100000, not '0'");
	refused("[daemon]\nmax_connections = 0\n" KEY_K, 2,
		"max_connections must be a whole number from 1 to 10000, not '0'");
	refused("[daemon]\nconnection_timeout = 0\n" KEY_K, 2,
		"connection_timeout (seconds) must be a whole number from 1 to 3600, not '0'");
	refused("[daemon]\nmax_header_size = 100\n" KEY_K, 2,
		"max_header_size (bytes) must be a whole number from 1024 to 1048576, not '100'");
	refused("[daemon]\nrequest_timeout = 301\n" KEY_K, 2,
		"request_timeout (seconds) must be a whole number from 1 to 300, not '301'");
	refused(KEY_K "[client c]\nuid = no-such-user-here\nkeys = *\n", 4,
		"client 'c': uid: no such user 'no-such-user-here'");
	refused(KEY_K "[client c]\ngid = no-such-group-here\nkeys = *\n", 4,
		"client 'c': gid: no such group 'no-such-group-here'");
	refused(KEY_K "[client c]\nuid = 0\nkeys = *\nrate = fast\n", 6, "rate must be N/s, "
		"N/m or N/h (N a whole number from 1 to 1000000), not 'fast'");
}
END_TEST

START_TEST(key_values)
{
	static const char pin_value[] = "pkcs11:token=t;object=k?" MODULE "&pin-value=1234";
	static const char no_module[] = "pkcs11:token=t;object=k?pin-source=file:/p";
	char text[1024];

	snprintf(text, sizeof(text), "[key k]\nuri = %s\n", pin_value);
	refused(text, 2, "key 'k': bad uri: %s", uri_why(pin_value));
	snprintf(text, sizeof(text), KEY_K "\n[key root-ca]\ncertificate = /c.pem\nuri = %s\n",
		 no_module);
	refused(text, 6, "key 'root-ca': bad uri: %s", uri_why(no_module));
	refused("[key k]\nuri = https://example.com/\n", 2, "key 'k': bad uri: %s",
		uri_why("https://example.com/"));
	refused("[key k]\nuri =\n", 2, "key 'k': bad uri: %s", uri_why(""));
	refused("[key k]\ncertificate = /c.pem\n", 1, "missing uri in [key k]");
	refused("[key k]\n[key j]\nuri = " GOOD_URI "\n", 1, "missing uri in [key k]");
	refused(KEY_K "[key j]\n\n# nothing\n", 3, "missing uri in [key j]");
	refused(KEY_K "[key j]\n[daemon]\n", 3, "missing uri in [key j]");
	refused(KEY_K "certificate =\n", 3,
		"key 'k': certificate is empty (leave it out if the token holds the certificate)");
}
END_TEST

#define BAD_HASH "client 'c': token_sha256 must be 64 hex digits (the SHA-256 of the bearer " \
	"token, as printed by popsign token-new)"

START_TEST(client_values)
{
	refused(KEY_K "[client c]\nkeys = *\n", 3,
		"[client c] needs token_sha256, uid or gid: how else would a caller be recognised?");
	refused(KEY_K "[client c]\ntoken_sha256 = " HASH_A "\n", 3, "missing keys in [client c]");
	refused(KEY_K "[client c]\ntoken_sha256 = " HASH_A "\n[client d]\n", 3,
		"missing keys in [client c]");
	refused(KEY_K "[client c]\ntoken_sha256 = 1234\nkeys = *\n", 4, BAD_HASH);
	refused(KEY_K "[client c]\ntoken_sha256 =\nkeys = *\n", 4, BAD_HASH);
	/* 63 and 65 digits, a non-hex digit, a space inside. */
	refused(KEY_K "[client c]\ntoken_sha256 = "
		"0112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n", 4, BAD_HASH);
	refused(KEY_K "[client c]\ntoken_sha256 = " HASH_A "0\n", 4, BAD_HASH);
	refused(KEY_K "[client c]\ntoken_sha256 = "
		"g0112233445566778899aabbccddeeff00112233445566778899aabbccddeef\n", 4, BAD_HASH);
	refused(KEY_K "[client c]\ntoken_sha256 = "
		"0011223344556677 8899aabbccddeeff00112233445566778899aabbccddeeff\n", 4, BAD_HASH);
	refused(KEY_K "[client a]\ntoken_sha256 = " HASH_A "\nkeys = *\n"
		"[client c]\ntoken_sha256 = " HASH_A "\nkeys = k\n", 7,
		"client 'c': same token_sha256 as client 'a'");
}
END_TEST

START_TEST(client_keys)
{
	const char *head = KEY_K "[key j]\nuri = " GOOD_URI "\n[client c]\ntoken_sha256 = " HASH_A
			   "\n";
	char text[1024];

#define CLIENT_KEYS(list) (snprintf(text, sizeof(text), "%skeys = %s\n", head, (list)), text)
	refused(CLIENT_KEYS(""), 7, "client 'c': empty name in keys");
	refused(CLIENT_KEYS("k,,j"), 7, "client 'c': empty name in keys");
	refused(CLIENT_KEYS("k, "), 7, "client 'c': empty name in keys");
	refused(CLIENT_KEYS("*, k"), 7, "client 'c': '*' must stand alone in keys");
	refused(CLIENT_KEYS("k, *"), 7, "client 'c': '*' must stand alone in keys");
	refused(CLIENT_KEYS("**"), 7, "client 'c': invalid key name '**' in keys");
	refused(CLIENT_KEYS("k j"), 7, "client 'c': invalid key name 'k j' in keys");
	refused(CLIENT_KEYS("k, j, k"), 7, "client 'c': key 'k' listed twice in keys");
	refused(CLIENT_KEYS("k, nokey"), 7,
		"client 'c': unknown key 'nokey' (there is no [key nokey] section)");
	/* The line reported is that of keys=, not of the section. */
	refused(KEY_K "[client c]\n\nkeys = k, gone\n\ntoken_sha256 = " HASH_A "\n", 5,
		"client 'c': unknown key 'gone' (there is no [key gone] section)");

	{
		struct config *c = load_ok(CLIENT_KEYS(" j ,k "));

		ck_assert_uint_eq(c->clients[0].n_keys, 2);
		ck_assert_str_eq(c->clients[0].keys[0], "j");
		ck_assert_str_eq(c->clients[0].keys[1], "k");
		config_free(c);
		c = load_ok(CLIENT_KEYS(" * "));
		ck_assert(c->clients[0].all_keys);
		config_free(c);
	}
#undef CLIENT_KEYS
}
END_TEST

/* Whatever the bytes, config_load answers 0 or PS_E_CONFIG with a
 * "FILE:LINE: " message; run under valgrind this also checks for leaks on
 * every error path. */
START_TEST(arbitrary_bytes)
{
	static const char alphabet[] = "[]=:;#, \t\r\n*kaydeonclitusrwf0123456789.\xef\xbb\xbf\0";
	unsigned seed = 12345;
	char text[600];

	for (int round = 0; round < 2000; round++) {
		size_t len = (size_t)(rand_r(&seed) % (int)sizeof(text));
		struct config *c = NULL;
		int r;

		if (round % 3 == 0) {
			/* Start from a valid file and damage it a little. */
			snprintf(text, sizeof(text), "%s", KEY_K "[client c]\ntoken_sha256 = " HASH_A
				 "\nkeys = k\n");
			len = strlen(text);
			text[(size_t)rand_r(&seed) % len] = alphabet[rand_r(&seed) % (int)sizeof(alphabet)];
		} else {
			for (size_t i = 0; i < len; i++)
				text[i] = alphabet[rand_r(&seed) % (int)sizeof(alphabet)];
		}
		c = load_len(text, len, &r);
		ck_assert_msg(r == 0 || r == PS_E_CONFIG, "round %d: %d", round, r);
		if (r == 0) {
			ck_assert_ptr_nonnull(c);
			config_free(c);
		} else {
			ck_assert_ptr_null(c);
			ck_assert_msg(strncmp(err, path, strlen(path)) == 0 && err[strlen(path)] == ':',
				      "round %d: %s", round, err);
		}
	}
}
END_TEST

int main(void)
{
	Suite *s = suite_create("config");
	TCase *parsers = tcase_create("parsers");
	TCase *files = tcase_create("files");
	int failed;

	tcase_add_test(parsers, duration_good);
	tcase_add_test(parsers, duration_bad);
	tcase_add_test(parsers, listen_good);
	tcase_add_test(parsers, listen_refused);
	tcase_add_test(parsers, names);
	suite_add_tcase(s, parsers);

	tcase_add_checked_fixture(files, setup, teardown);
	tcase_add_test(files, full_config);
	tcase_add_test(files, defaults);
	tcase_add_test(files, workers_bounds);
	tcase_add_test(files, keys_forward_reference_and_long_names);
	tcase_add_test(files, long_names_distinct);
	tcase_add_test(files, layout_tolerated);
	tcase_add_test(files, listen_many);
	tcase_add_test(files, line_length_limit);
	tcase_add_test(files, huge_line_and_file_limit);
	tcase_add_test(files, example_config_loads);
	tcase_add_test(files, file_problems);
	tcase_add_test(files, bytes_refused);
	tcase_add_test(files, syntax);
	tcase_add_test(files, sections);
	tcase_add_test(files, unknown_and_duplicate_keys);
	tcase_add_test(files, daemon_values);
	tcase_add_test(files, key_values);
	tcase_add_test(files, client_values);
	tcase_add_test(files, security_values);
	tcase_add_test(files, client_keys);
	tcase_add_test(files, arbitrary_bytes);
	suite_add_tcase(s, files);

	failed = check_run(s);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
