/* auth_authenticate and auth_may_use_key against a real config file. */
#include <check.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "auth.h"
#include "config.h"
#include "error.h"
#include "text.h"
#include "check_run.h"

#define GOOD_URI "pkcs11:token=t;object=k;type=private" \
	"?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/p/k.pin"

static char dir[PATH_MAX];
static char path[PATH_MAX + 32];
static struct config *cfg;
static char long_ok[AUTH_TOKEN_MAX + 1];   /* AUTH_TOKEN_MAX characters */
static char long_bad[AUTH_TOKEN_MAX + 2];  /* one more */

static void sha256_hex(const char *token, char out[65])
{
	uint8_t d[32];

	ck_assert(EVP_Digest(token, strlen(token), d, NULL, EVP_sha256(), NULL));
	hex_encode(d, sizeof(d), false, out);
}

static void client_section(FILE *f, const char *name, const char *token, const char *keys)
{
	char hex[65];

	sha256_hex(token, hex);
	fprintf(f, "[client %s]\ntoken_sha256 = %s\nkeys = %s\n", name, hex, keys);
}

/* Clients: alpha (keys root-ca, other), beta (*), padded (token with '='
 * padding), longest (a token of AUTH_TOKEN_MAX characters) and toolong
 * (one character more: configured, yet never accepted). */
static void setup(void)
{
	char err[CONFIG_ERROR_MAX];
	FILE *f;

	memset(long_ok, 'T', AUTH_TOKEN_MAX);
	long_ok[AUTH_TOKEN_MAX] = '\0';
	memset(long_bad, 'U', AUTH_TOKEN_MAX + 1);
	long_bad[AUTH_TOKEN_MAX + 1] = '\0';
	snprintf(dir, sizeof(dir), "%s/test_auth.XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
	ck_assert_ptr_nonnull(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/popsignd.conf", dir);
	f = fopen(path, "w");
	ck_assert_ptr_nonnull(f);
	fprintf(f, "[key root-ca]\nuri = %s\n[key other]\nuri = %s\n[key third]\nuri = %s\n",
		GOOD_URI, GOOD_URI, GOOD_URI);
	client_section(f, "alpha", "alpha-Token_1.2~3+4/5", "root-ca, other");
	client_section(f, "beta", "beta-token", "*");
	client_section(f, "padded", "cGFkZGVk==", "third");
	client_section(f, "longest", long_ok, "third");
	client_section(f, "toolong", long_bad, "*");
	ck_assert_int_eq(fclose(f), 0);
	ck_assert_msg(config_load(path, &cfg, err) == 0, "%s", err);
}

static void teardown(void)
{
	config_free(cfg);
	cfg = NULL;
	unlink(path);
	rmdir(dir);
}

static const char *who(const char *header)
{
	const struct config_client *c = NULL;
	int r = auth_authenticate(cfg, header, NULL, &c);

	ck_assert_msg(r == 0, "'%s' refused: %d", header, r);
	ck_assert_ptr_nonnull(c);
	return c->name;
}

static void refused(const char *header)
{
	const struct config_client *sentinel = (const struct config_client *)0x1, *c = sentinel;

	ck_assert_msg(auth_authenticate(cfg, header, NULL, &c) == PS_E_UNAUTHORIZED, "'%s' accepted",
		      header ? header : "(null)");
	ck_assert_ptr_eq(c, sentinel);
}

START_TEST(right_tokens)
{
	char header[AUTH_TOKEN_MAX + 32];

	ck_assert_str_eq(who("Bearer alpha-Token_1.2~3+4/5"), "alpha");
	ck_assert_str_eq(who("Bearer beta-token"), "beta");
	ck_assert_str_eq(who("Bearer cGFkZGVk=="), "padded");
	snprintf(header, sizeof(header), "Bearer %s", long_ok);
	ck_assert_str_eq(who(header), "longest");
	/* The returned client is the config's own. */
	{
		const struct config_client *c = NULL;

		ck_assert_int_eq(auth_authenticate(cfg, "Bearer beta-token", NULL, &c), 0);
		ck_assert_ptr_eq(c, &cfg->clients[1]);
	}
}
END_TEST

START_TEST(scheme_and_blanks)
{
	ck_assert_str_eq(who("bearer beta-token"), "beta");
	ck_assert_str_eq(who("BEARER beta-token"), "beta");
	ck_assert_str_eq(who("BeArEr beta-token"), "beta");
	ck_assert_str_eq(who("Bearer   beta-token"), "beta");
	ck_assert_str_eq(who("Bearer\tbeta-token"), "beta");
	ck_assert_str_eq(who("Bearer beta-token  "), "beta");
	ck_assert_str_eq(who("Bearer beta-token\t"), "beta");
}
END_TEST

START_TEST(wrong_or_malformed)
{
	char header[AUTH_TOKEN_MAX + 32];

	refused(NULL);
	refused("");
	refused("beta-token");
	refused("Bearer beta-tokem");
	refused("Bearer beta-toke");
	refused("Bearer beta-token-");
	refused("Bearer BETA-TOKEN");
	refused("Basic YmV0YTpiZXRhLXRva2Vu");
	refused("Basic beta-token");
	refused("Bearer");
	refused("Bearer ");
	refused("Bearer \t ");
	refused("Bearerbeta-token");
	refused("Bearer: beta-token");
	refused(" Bearer beta-token");
	refused("Bear beta-token");
	refused("Bearer beta-token beta-token");
	refused("Bearer beta token");
	refused("Bearer beta-token,");
	refused("Bearer beta$token");
	refused("Bearer beta-token\r\n");
	refused("Bearer \"beta-token\"");
	refused("Bearer beta=token");
	refused("Bearer ==");
	refused("Bearer =beta-token");
	refused("Bearer cGFkZGVk=");       /* the padding is part of the token */
	refused("Bearer cGFkZGVk");
	refused("Bearer beta-tok\xc3\xa9n");
	/* One character over the limit, although that token is configured. */
	snprintf(header, sizeof(header), "Bearer %s", long_bad);
	refused(header);
	/* The limit counts the padding too. */
	snprintf(header, sizeof(header), "Bearer %s=", long_ok);
	refused(header);
}
END_TEST

START_TEST(huge_header)
{
	size_t n = 1024 * 1024;
	char *header = malloc(n + 8);

	ck_assert_ptr_nonnull(header);
	strcpy(header, "Bearer ");
	memset(header + 7, 'a', n);
	header[n + 7] = '\0';
	refused(header);
	free(header);
}
END_TEST

START_TEST(no_clients)
{
	struct config empty = { 0 };
	const struct config_client *c = NULL;

	ck_assert_int_eq(auth_authenticate(&empty, "Bearer beta-token", NULL, &c), PS_E_UNAUTHORIZED);
	ck_assert_int_eq(auth_authenticate(NULL, "Bearer beta-token", NULL, &c), PS_E_UNAUTHORIZED);
	ck_assert_ptr_null(c);
}
END_TEST

/* A client without a hash (not possible from config_load, but the struct
 * allows it) never matches, even the hash of all zeros. */
START_TEST(client_without_token)
{
	struct config_client client = { .name = "none", .has_token = false, .all_keys = true };
	struct config c = { .clients = &client, .n_clients = 1 };
	const struct config_client *ret = NULL;

	ck_assert_int_eq(auth_authenticate(&c, "Bearer x", NULL, &ret), PS_E_UNAUTHORIZED);
	ck_assert_ptr_null(ret);
}
END_TEST

/* Unix-socket callers: by uid and gid alone, or a token bound to a uid. */
START_TEST(peer_credentials)
{
	static const char uid_only[] = "[client byuid]\nuid = 1000\nkeys = *\n";
	static const char both[] = "[client both]\nuid = 1001\ngid = 50\nkeys = *\n";
	const struct auth_peer p1000 = {true, 1000, 100}, p1001 = {true, 1001, 50},
			       p1001g = {true, 1001, 51}, tcp = {false, 1000, 100};
	char err[CONFIG_ERROR_MAX], hex[65];
	const struct config_client *c = NULL;
	struct config *pc = NULL;
	FILE *f = fopen(path, "w");

	ck_assert_ptr_nonnull(f);
	sha256_hex("bound-token", hex);
	fprintf(f, "[key k]\nuri = %s\n%s%s[client bound]\ntoken_sha256 = %s\nuid = 2000\n"
		   "keys = *\n", GOOD_URI, uid_only, both, hex);
	ck_assert_int_eq(fclose(f), 0);
	ck_assert_msg(config_load(path, &pc, err) == 0, "%s", err);

	ck_assert_int_eq(auth_authenticate(pc, NULL, &p1000, &c), 0);
	ck_assert_str_eq(c->name, "byuid");
	ck_assert_int_eq(auth_authenticate(pc, NULL, &p1001, &c), 0);
	ck_assert_str_eq(c->name, "both");
	/* uid right, gid wrong: both must hold. */
	ck_assert_int_eq(auth_authenticate(pc, NULL, &p1001g, &c), PS_E_UNAUTHORIZED);
	/* TCP peers have no credentials to match. */
	ck_assert_int_eq(auth_authenticate(pc, NULL, &tcp, &c), PS_E_UNAUTHORIZED);
	ck_assert_int_eq(auth_authenticate(pc, NULL, NULL, &c), PS_E_UNAUTHORIZED);
	/* A token bound to uid 2000 works only from uid 2000 on the socket. */
	ck_assert_int_eq(auth_authenticate(pc, "Bearer bound-token", &p1000, &c),
			 PS_E_UNAUTHORIZED);
	ck_assert_int_eq(auth_authenticate(pc, "Bearer bound-token", &tcp, &c), PS_E_UNAUTHORIZED);
	ck_assert_int_eq(auth_authenticate(pc, "Bearer bound-token",
					   &(struct auth_peer){true, 2000, 7}, &c), 0);
	ck_assert_str_eq(c->name, "bound");
	/* A wrong token is refused even from a uid some client accepts. */
	ck_assert_int_eq(auth_authenticate(pc, "Bearer wrong", &p1000, &c), PS_E_UNAUTHORIZED);
	config_free(pc);
}
END_TEST

START_TEST(may_use_key)
{
	const struct config_client *alpha = &cfg->clients[0], *beta = &cfg->clients[1];

	ck_assert_str_eq(alpha->name, "alpha");
	ck_assert(auth_may_use_key(alpha, "root-ca"));
	ck_assert(auth_may_use_key(alpha, "other"));
	ck_assert(!auth_may_use_key(alpha, "third"));
	ck_assert(!auth_may_use_key(alpha, "root"));
	ck_assert(!auth_may_use_key(alpha, "root-ca2"));
	ck_assert(!auth_may_use_key(alpha, "ROOT-CA"));
	ck_assert(!auth_may_use_key(alpha, ""));
	ck_assert(!auth_may_use_key(alpha, NULL));
	ck_assert(!auth_may_use_key(alpha, "*"));
	ck_assert(beta->all_keys);
	ck_assert(auth_may_use_key(beta, "root-ca"));
	ck_assert(auth_may_use_key(beta, "third"));
	ck_assert(auth_may_use_key(beta, "not-configured"));
	ck_assert(!auth_may_use_key(NULL, "root-ca"));
}
END_TEST

int main(void)
{
	Suite *s = suite_create("auth");
	TCase *tc = tcase_create("auth");
	int failed;

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, right_tokens);
	tcase_add_test(tc, scheme_and_blanks);
	tcase_add_test(tc, wrong_or_malformed);
	tcase_add_test(tc, huge_header);
	tcase_add_test(tc, no_clients);
	tcase_add_test(tc, client_without_token);
	tcase_add_test(tc, may_use_key);
	tcase_add_test(tc, peer_credentials);
	suite_add_tcase(s, tc);
	failed = check_run(s);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
