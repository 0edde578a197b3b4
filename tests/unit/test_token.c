/* token*.c against a real SoftHSM2 token made by tests/make-token.sh, every
 * signature checked with OpenSSL against the CA certificate's public key.
 * The "faults" case reaches the token through the fault-injecting module of
 * tests/fakes (FAULTY_PKCS11_PATH, else <build>/tests/fakes) and counts what
 * token.c asked of it in the module's call log.
 *
 * main() makes one shared token (ec256 rsa2048 ec384) that no test changes;
 * a test that changes a token (wrong PIN, new objects) makes its own, so no
 * test depends on another or on the order they run in. */
#include <check.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <p11-kit/pkcs11.h>

#include "error.h"
#include "token.h"
#include "uri.h"
#include "check_run.h"

static char base[64];       /* removed at the end */
static char shared[128];    /* the shared token's directory */
static const char *module_path;
static char faulty_path[4096]; /* the fault-injecting module (tests/fakes) */

/* ---- helpers ---- */

static void run(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void run(const char *fmt, ...)
{
	char cmd[2048];
	va_list ap;
	int r;

	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	r = system(cmd);
	ck_assert_msg(r == 0, "command failed (%d): %s", r, cmd);
}

static void setenv_conf(const char *dir)
{
	char conf[256];

	snprintf(conf, sizeof(conf), "%s/softhsm2.conf", dir);
	setenv("SOFTHSM2_CONF", conf, 1);
}

/* A fresh token of its own in a new directory under base; SOFTHSM2_CONF
 * points at it (each test runs in its own process, or restores it). */
static void own_token(char dir[128], const char *keys)
{
	snprintf(dir, 128, "%s/tXXXXXX", base);
	ck_assert_ptr_nonnull(mkdtemp(dir));
	run("\"%s\" %s %s", getenv("MAKE_TOKEN"), dir, keys);
	setenv_conf(dir);
}

static struct key_uri *uri_of(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static struct key_uri *uri_of(const char *fmt, ...)
{
	char text[1024];
	struct key_uri *u = NULL;
	const char *why = NULL;
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	ck_assert_msg(key_uri_parse(text, &u, &why) == 0, "%s: %s", text, why);
	return u;
}

/* The URI of key in dir's token, with the token's PIN file. */
static struct key_uri *key_uri_in(const char *dir, const char *key)
{
	return uri_of("pkcs11:token=popsign-test;object=%s;type=private?module-path=%s"
		      "&pin-source=file:%s/user.pin", key, module_path, dir);
}

static int add(struct token_set *set, struct key_uri *u, struct token_key **ret)
{
	int r = token_set_add_key(set, u, ret);

	key_uri_free(u);
	return r;
}

static struct token_set *new_set(unsigned sessions)
{
	struct token_set *set = NULL;

	ck_assert_int_eq(token_set_new(sessions, &set), 0);
	return set;
}

static void restore_conf(void)
{
	setenv_conf(shared);
}

static void write_file(const char *path, const char *text, mode_t mode)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);

	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	ck_assert_int_eq(fchmod(fd, mode), 0);
	close(fd);
}

/* ---- signatures, checked with OpenSSL ---- */

static const EVP_MD *md_of(const char *key)
{
	return strcmp(key, "ec384") == 0 ? EVP_sha384() : EVP_sha256();
}

static EVP_PKEY *ca_public_key(const char *dir, const char *key)
{
	char path[256];
	FILE *f;
	X509 *x;
	EVP_PKEY *pkey;

	snprintf(path, sizeof(path), "%s/%s.pem", dir, key);
	f = fopen(path, "r");
	if (!f)
		return NULL;
	x = PEM_read_X509(f, NULL, NULL, NULL);
	fclose(f);
	if (!x)
		return NULL;
	pkey = X509_get_pubkey(x);
	X509_free(x);
	return pkey;
}

/* Signs msg with k the way issue.c will: a digest for EC, a SHA-256
 * DigestInfo for RSA.  Returns token_key_sign's result. */
static int sign_msg(struct token_key *k, const char *key, const void *msg, size_t msglen,
		    uint8_t *sig, size_t *siglen)
{
	static const uint8_t sha256_prefix[] = { 0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60,
						 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
						 0x01, 0x05, 0x00, 0x04, 0x20 };
	uint8_t in[sizeof(sha256_prefix) + EVP_MAX_MD_SIZE];
	unsigned dlen = 0;
	size_t off = 0;

	if (token_key_type(k) == TOKEN_KEY_RSA) {
		memcpy(in, sha256_prefix, sizeof(sha256_prefix));
		off = sizeof(sha256_prefix);
	}
	if (!EVP_Digest(msg, msglen, in + off, &dlen, md_of(key), NULL))
		return PS_E_CRYPTO;
	return token_key_sign(k, in, off + dlen, sig, siglen);
}

static bool verify_ec(EVP_PKEY *pkey, const EVP_MD *md, const void *msg, size_t msglen,
		      const uint8_t *sig, size_t siglen)
{
	uint8_t digest[EVP_MAX_MD_SIZE], *der = NULL;
	unsigned dlen = 0;
	ECDSA_SIG *es = ECDSA_SIG_new();
	EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new(pkey, NULL);
	bool ok = false;
	int derlen;

	if (!es || !ctx || siglen % 2 || !EVP_Digest(msg, msglen, digest, &dlen, md, NULL))
		goto out;
	if (!ECDSA_SIG_set0(es, BN_bin2bn(sig, (int)(siglen / 2), NULL),
			    BN_bin2bn(sig + siglen / 2, (int)(siglen / 2), NULL)))
		goto out;
	derlen = i2d_ECDSA_SIG(es, &der);
	ok = derlen > 0 && EVP_PKEY_verify_init(ctx) == 1 &&
	     EVP_PKEY_verify(ctx, der, derlen, digest, dlen) == 1;
out:
	OPENSSL_free(der);
	ECDSA_SIG_free(es);
	EVP_PKEY_CTX_free(ctx);
	return ok;
}

static bool verify_rsa(EVP_PKEY *pkey, const void *msg, size_t msglen, const uint8_t *sig,
		       size_t siglen)
{
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	bool ok = ctx && EVP_DigestVerifyInit(ctx, NULL, EVP_sha256(), NULL, pkey) == 1 &&
		  EVP_DigestVerify(ctx, sig, siglen, msg, msglen) == 1;

	EVP_MD_CTX_free(ctx);
	return ok;
}

/* Whether sig is key's signature of msg, per the CA certificate in dir. */
static bool verify(const char *dir, const char *key, const void *msg, size_t msglen,
		   const uint8_t *sig, size_t siglen)
{
	EVP_PKEY *pkey = ca_public_key(dir, key);
	bool ok;

	if (!pkey)
		return false;
	if (EVP_PKEY_get_base_id(pkey) == EVP_PKEY_RSA)
		ok = verify_rsa(pkey, msg, msglen, sig, siglen);
	else
		ok = verify_ec(pkey, md_of(key), msg, msglen, sig, siglen);
	EVP_PKEY_free(pkey);
	return ok;
}

static void sign_and_verify(const char *dir, struct token_key *k, const char *key,
			    size_t want_len)
{
	static const char msg[] = "to be signed";
	uint8_t sig[TOKEN_SIG_MAX];
	size_t siglen = 0;

	ck_assert_int_eq(sign_msg(k, key, msg, sizeof(msg), sig, &siglen), 0);
	ck_assert_uint_eq(siglen, want_len);
	ck_assert_msg(verify(dir, key, msg, sizeof(msg), sig, siglen), "%s: bad signature", key);
	/* The check can fail: another message does not verify. */
	ck_assert(!verify(dir, key, "other", 5, sig, siglen));
}

/* ---- tests ---- */

START_TEST(sign_ec256)
{
	struct token_set *set = new_set(2);
	struct token_key *k = NULL;

	ck_assert_int_eq(add(set, key_uri_in(shared, "ec256"), &k), 0);
	ck_assert_int_eq(token_key_type(k), TOKEN_KEY_EC);
	sign_and_verify(shared, k, "ec256", 64);
	sign_and_verify(shared, k, "ec256", 64); /* the cached handle */
	token_set_free(set);
}
END_TEST

START_TEST(sign_ec384)
{
	struct token_set *set = new_set(1);
	struct token_key *k = NULL;

	ck_assert_int_eq(add(set, key_uri_in(shared, "ec384"), &k), 0);
	ck_assert_int_eq(token_key_type(k), TOKEN_KEY_EC);
	sign_and_verify(shared, k, "ec384", 96);
	token_set_free(set);
}
END_TEST

START_TEST(sign_rsa2048)
{
	struct token_set *set = new_set(1);
	struct token_key *k = NULL;

	ck_assert_int_eq(add(set, key_uri_in(shared, "rsa2048"), &k), 0);
	ck_assert_int_eq(token_key_type(k), TOKEN_KEY_RSA);
	sign_and_verify(shared, k, "rsa2048", 256);
	token_set_free(set);
}
END_TEST

START_TEST(key_by_id_only)
{
	struct token_set *set = new_set(1);
	struct token_key *k = NULL;

	/* make-token.sh gives ids in argument order: rsa2048 is 02. */
	ck_assert_int_eq(add(set, uri_of("pkcs11:id=%%02?module-path=%s&pin-source=%s/user.pin",
					 module_path, shared), &k), 0);
	ck_assert_int_eq(token_key_type(k), TOKEN_KEY_RSA);
	sign_and_verify(shared, k, "rsa2048", 256);
	token_set_free(set);
}
END_TEST

START_TEST(token_by_serial_and_model)
{
	struct token_set *set = new_set(1);
	struct token_key *k = NULL;

	ck_assert_int_eq(add(set, uri_of("pkcs11:model=SoftHSM%%20v2;manufacturer=SoftHSM%%20project;"
					 "object=ec256?module-path=%s&pin-source=%s/user.pin",
					 module_path, shared), &k), 0);
	sign_and_verify(shared, k, "ec256", 64);
	ck_assert_int_eq(add(set, uri_of("pkcs11:serial=0000000000000000;object=ec256"
					 "?module-path=%s&pin-source=%s/user.pin",
					 module_path, shared), &k), PS_E_NOT_FOUND);
	token_set_free(set);
}
END_TEST

START_TEST(missing_token)
{
	struct token_set *set = new_set(1);
	struct token_key *k = (struct token_key *)0x1;

	ck_assert_int_eq(add(set, uri_of("pkcs11:token=no-such-token;object=ec256?module-path=%s"
					 "&pin-source=%s/user.pin", module_path, shared), &k),
			 PS_E_NOT_FOUND);
	ck_assert_ptr_eq(k, (struct token_key *)0x1);
	token_set_free(set);
}
END_TEST

START_TEST(missing_key)
{
	struct token_set *set = new_set(1);
	struct token_key *k = (struct token_key *)0x1;

	ck_assert_int_eq(add(set, key_uri_in(shared, "no-such-key"), &k), PS_E_NOT_FOUND);
	ck_assert_int_eq(add(set, uri_of("pkcs11:token=popsign-test;id=%%09?module-path=%s"
					 "&pin-source=%s/user.pin", module_path, shared), &k),
			 PS_E_NOT_FOUND);
	/* A label and an id that each exist, but not on the same key. */
	ck_assert_int_eq(add(set, uri_of("pkcs11:object=ec256;id=%%02?module-path=%s"
					 "&pin-source=%s/user.pin", module_path, shared), &k),
			 PS_E_NOT_FOUND);
	ck_assert_ptr_eq(k, (struct token_key *)0x1);
	/* The set still works after failures. */
	ck_assert_int_eq(add(set, key_uri_in(shared, "ec256"), &k), 0);
	sign_and_verify(shared, k, "ec256", 64);
	token_set_free(set);
}
END_TEST

START_TEST(no_pin_source_sees_no_private_key)
{
	struct token_set *set = new_set(1);
	struct token_key *k = NULL;

	/* Without a login the private key is invisible. */
	ck_assert_int_eq(add(set, uri_of("pkcs11:token=popsign-test;object=ec256?module-path=%s",
					 module_path), &k), PS_E_NOT_FOUND);
	token_set_free(set);
}
END_TEST

START_TEST(two_keys_share_the_login)
{
	struct token_set *set = new_set(2);
	struct token_key *a = NULL, *b = NULL;

	ck_assert_int_eq(add(set, key_uri_in(shared, "ec256"), &a), 0);
	/* No pin-source: found only because the token is logged in already. */
	ck_assert_int_eq(add(set, uri_of("pkcs11:token=popsign-test;object=rsa2048?module-path=%s",
					 module_path), &b), 0);
	ck_assert_ptr_ne(a, b);
	sign_and_verify(shared, a, "ec256", 64);
	sign_and_verify(shared, b, "rsa2048", 256);
	/* A third key through the module path spelt differently: one module. */
	ck_assert_int_eq(add(set, uri_of("pkcs11:token=popsign-test;object=ec384?module-path=%.*s/.%s"
					 "&pin-source=%s/user.pin",
					 (int)(strrchr(module_path, '/') - module_path), module_path,
					 strrchr(module_path, '/'), shared), &b), 0);
	sign_and_verify(shared, b, "ec384", 96);
	token_set_free(set);
}
END_TEST

START_TEST(every_key_pin_file_checked)
{
	char pin[256];
	struct token_set *set = new_set(1);
	struct token_key *a = NULL, *b = NULL;

	ck_assert_int_eq(add(set, key_uri_in(shared, "ec256"), &a), 0);
	/* The token is logged in, yet a second key's broken pin-source is refused. */
	ck_assert_int_eq(add(set, uri_of("pkcs11:token=popsign-test;object=rsa2048?module-path=%s"
					 "&pin-source=%s/nosuch.pin", module_path, shared), &b),
			 PS_E_PIN);
	snprintf(pin, sizeof(pin), "%s/same-XXXXXX", base);
	close(mkstemp(pin));
	write_file(pin, "123456\n", 0640);
	ck_assert_int_eq(add(set, uri_of("pkcs11:token=popsign-test;object=rsa2048?module-path=%s"
					 "&pin-source=%s", module_path, pin), &b), PS_E_PIN);
	/* Another PIN is never offered to a token that is logged in already. */
	write_file(pin, "654321\n", 0600);
	ck_assert_int_eq(add(set, uri_of("pkcs11:token=popsign-test;object=rsa2048?module-path=%s"
					 "&pin-source=%s", module_path, pin), &b), PS_E_PIN);
	/* The same PIN from another file is fine. */
	write_file(pin, "123456", 0400);
	ck_assert_int_eq(add(set, uri_of("pkcs11:token=popsign-test;object=rsa2048?module-path=%s"
					 "&pin-source=%s", module_path, pin), &b), 0);
	sign_and_verify(shared, b, "rsa2048", 256);
	sign_and_verify(shared, a, "ec256", 64);
	unlink(pin);
	token_set_free(set);
}
END_TEST

/* Runs fn with stderr going to a file and returns what it wrote. */
static char *capture_stderr(int (*fn)(void *), void *arg, int *ret)
{
	char path[256];
	static char buf[8192];
	int saved = dup(2), fd;
	ssize_t n;

	snprintf(path, sizeof(path), "%s/stderr-XXXXXX", base);
	fd = mkstemp(path);
	ck_assert_int_ge(fd, 0);
	fflush(stderr);
	dup2(fd, 2);
	*ret = fn(arg);
	fflush(stderr);
	dup2(saved, 2);
	close(saved);
	n = pread(fd, buf, sizeof(buf) - 1, 0);
	close(fd);
	unlink(path);
	buf[n > 0 ? n : 0] = '\0';
	return buf;
}

struct add_args {
	struct token_set *set;
	struct key_uri *uri;
};

static int add_fn(void *p)
{
	struct add_args *a = p;
	struct token_key *k = NULL;

	return add(a->set, a->uri, &k);
}

START_TEST(wrong_pin)
{
	char dir[128], pin[256];
	struct token_set *set = new_set(2);
	struct token_key *k = NULL;
	struct add_args a = { set, NULL };
	const char *log;
	int r;

	own_token(dir, "ec256 rsa2048");
	snprintf(pin, sizeof(pin), "%s/wrong.pin", dir);
	write_file(pin, "999999\n", 0600);
	a.uri = uri_of("pkcs11:token=popsign-test;object=ec256?module-path=%s&pin-source=%s",
		       module_path, pin);
	log = capture_stderr(add_fn, &a, &r);
	ck_assert_int_eq(r, PS_E_PIN);
	ck_assert_msg(strstr(log, "C_Login") && strstr(log, "CKR_PIN_INCORRECT"), "log: %s", log);
	/* A second key on that token: refused without offering any PIN again,
	 * even the right one. */
	a.uri = key_uri_in(dir, "rsa2048");
	log = capture_stderr(add_fn, &a, &r);
	ck_assert_int_eq(r, PS_E_PIN);
	ck_assert_msg(strstr(log, "not trying again") && !strstr(log, "C_Login"), "log: %s", log);
	token_set_free(set);
	/* The right PIN in a new set works: nothing was locked. */
	set = new_set(1);
	ck_assert_int_eq(add(set, key_uri_in(dir, "ec256"), &k), 0);
	sign_and_verify(dir, k, "ec256", 64);
	token_set_free(set);
	restore_conf();
}
END_TEST

START_TEST(pin_file_problems)
{
	char pin[256];
	struct token_set *set = new_set(1);
	struct add_args a = { set, NULL };
	const char *log;
	int r;

	snprintf(pin, sizeof(pin), "%s/open-XXXXXX", base);
	close(mkstemp(pin));
	write_file(pin, "123456\n", 0644);
	a.uri = uri_of("pkcs11:token=popsign-test;object=ec256?module-path=%s&pin-source=%s",
		       module_path, pin);
	log = capture_stderr(add_fn, &a, &r);
	ck_assert_int_eq(r, PS_E_PIN);
	ck_assert_msg(strstr(log, "readable or writable by group or others"), "log: %s", log);

	write_file(pin, "", 0600);
	a.uri = uri_of("pkcs11:token=popsign-test;object=ec256?module-path=%s&pin-source=%s",
		       module_path, pin);
	log = capture_stderr(add_fn, &a, &r);
	ck_assert_int_eq(r, PS_E_PIN);
	ck_assert_msg(strstr(log, "empty"), "log: %s", log);
	unlink(pin);

	a.uri = uri_of("pkcs11:token=popsign-test;object=ec256?module-path=%s&pin-source=%s",
		       module_path, pin);
	log = capture_stderr(add_fn, &a, &r);
	ck_assert_int_eq(r, PS_E_PIN);
	ck_assert_msg(strstr(log, "does not exist"), "log: %s", log);
	token_set_free(set);
}
END_TEST

START_TEST(module_problems)
{
	struct token_set *set = new_set(1);
	struct token_key *k = (struct token_key *)0x1;
	Dl_info libc;

	ck_assert_int_eq(add(set, uri_of("pkcs11:object=ec256?module-path=/nonexistent/libp11mod.so"
					 "&pin-source=%s/user.pin", shared), &k),
			 PS_E_NOT_FOUND);
	/* A file that exists but is no shared library. */
	ck_assert_int_eq(add(set, uri_of("pkcs11:object=ec256?module-path=%s/softhsm2.conf"
					 "&pin-source=%s/user.pin", shared, shared), &k),
			 PS_E_TOKEN);
	/* A shared library that is no PKCS#11 module. */
	ck_assert_int_ne(dladdr((void *)printf, &libc), 0);
	ck_assert_int_eq(add(set, uri_of("pkcs11:object=ec256?module-path=%s", libc.dli_fname), &k),
			 PS_E_TOKEN);
	ck_assert_ptr_eq(k, (struct token_key *)0x1);
	token_set_free(set);
}
END_TEST

START_TEST(unsupported_and_ambiguous_keys)
{
	char dir[128];
	struct token_set *set = new_set(1);
	struct token_key *k = NULL;

	own_token(dir, "ec256");
	run("pkcs11-tool --module %s --token-label popsign-test --login --pin 123456 --keypairgen "
	    "--key-type EC:edwards25519 --label ed --id 09 >/dev/null 2>&1", module_path);
	run("pkcs11-tool --module %s --token-label popsign-test --login --pin 123456 --keypairgen "
	    "--key-type EC:prime256v1 --label ec256 --id 05 >/dev/null 2>&1", module_path);
	ck_assert_int_eq(add(set, key_uri_in(dir, "ed"), &k), PS_E_UNSUPPORTED);
	ck_assert_int_eq(add(set, key_uri_in(dir, "ec256"), &k), PS_E_TOKEN); /* two match */
	ck_assert_int_eq(add(set, uri_of("pkcs11:object=ec256;id=%%01?module-path=%s"
					 "&pin-source=%s/user.pin", module_path, dir), &k), 0);
	sign_and_verify(dir, k, "ec256", 64);
	token_set_free(set);
	restore_conf();
}
END_TEST

struct worker {
	struct token_key *k;
	const char *key;
	int id;
	int failures;
};

static void *sign_many(void *p)
{
	struct worker *w = p;

	for (int i = 0; i < 50; i++) {
		char msg[64];
		uint8_t sig[TOKEN_SIG_MAX];
		size_t siglen = 0;
		int n = snprintf(msg, sizeof(msg), "thread %d signature %d", w->id, i);

		if (sign_msg(w->k, w->key, msg, (size_t)n, sig, &siglen) != 0 ||
		    !verify(shared, w->key, msg, (size_t)n, sig, siglen))
			w->failures++;
	}
	return NULL;
}

START_TEST(concurrent_signing)
{
	struct token_set *set = new_set(4);
	struct token_key *ec = NULL, *rsa = NULL;
	struct worker w[8];
	pthread_t th[8];

	ck_assert_int_eq(add(set, key_uri_in(shared, "ec256"), &ec), 0);
	ck_assert_int_eq(add(set, key_uri_in(shared, "rsa2048"), &rsa), 0);
	for (int i = 0; i < 8; i++) {
		/* Mixed keys: handles of keys are found lazily per session. */
		w[i] = (struct worker){ i % 2 ? rsa : ec, i % 2 ? "rsa2048" : "ec256", i, 0 };
		ck_assert_int_eq(pthread_create(&th[i], NULL, sign_many, &w[i]), 0);
	}
	for (int i = 0; i < 8; i++) {
		pthread_join(th[i], NULL);
		ck_assert_msg(w[i].failures == 0, "thread %d: %d bad signatures", i, w[i].failures);
	}
	token_set_free(set);
}
END_TEST

static CK_SLOT_ID slot_of_test_token(CK_FUNCTION_LIST_PTR fl)
{
	CK_SLOT_ID slots[16];
	CK_ULONG n = 16;
	CK_TOKEN_INFO ti;

	ck_assert_int_eq(fl->C_GetSlotList(CK_TRUE, slots, &n), CKR_OK);
	for (CK_ULONG i = 0; i < n; i++)
		if (fl->C_GetTokenInfo(slots[i], &ti) == CKR_OK &&
		    memcmp(ti.label, "popsign-test ", 13) == 0)
			return slots[i];
	ck_abort_msg("test token not found");
	return 0;
}

START_TEST(session_lost_is_reopened)
{
	struct token_set *set = new_set(1);
	struct token_key *k = NULL;
	CK_C_GetFunctionList get;
	CK_FUNCTION_LIST_PTR fl = NULL;
	void *dl;

	ck_assert_int_eq(add(set, key_uri_in(shared, "ec256"), &k), 0);
	sign_and_verify(shared, k, "ec256", 64);
	/* Behind token.c's back: close every session of this process on the
	 * token, which also logs it out (the module is already initialised). */
	dl = dlopen(module_path, RTLD_NOW | RTLD_NOLOAD);
	ck_assert_ptr_nonnull(dl);
	get = (CK_C_GetFunctionList)dlsym(dl, "C_GetFunctionList");
	ck_assert_int_eq(get(&fl), CKR_OK);
	ck_assert_int_eq(fl->C_CloseAllSessions(slot_of_test_token(fl)), CKR_OK);
	sign_and_verify(shared, k, "ec256", 64);
	sign_and_verify(shared, k, "ec256", 64);
	dlclose(dl);
	token_set_free(set);
}
END_TEST

START_TEST(certificate_from_token)
{
	char dir[128], der_path[256];
	struct token_set *set = new_set(1);
	struct token_key *k = NULL;
	uint8_t *der = NULL, file[8192];
	size_t len = 0;
	ssize_t flen;
	int fd;

	own_token(dir, "ec256");
	ck_assert_int_eq(add(set, key_uri_in(dir, "ec256"), &k), 0);
	ck_assert_int_eq(token_key_certificate(k, &der, &len), PS_E_NOT_FOUND);
	ck_assert_ptr_null(der);
	snprintf(der_path, sizeof(der_path), "%s/ec256.der", dir);
	run("openssl x509 -in %s/ec256.pem -outform DER -out %s", dir, der_path);
	run("pkcs11-tool --module %s --token-label popsign-test --login --pin 123456 "
	    "--write-object %s --type cert --id 01 --label ec256 >/dev/null 2>&1", module_path,
	    der_path);
	token_set_free(set);

	set = new_set(1);
	ck_assert_int_eq(add(set, uri_of("pkcs11:object=ec256?module-path=%s&pin-source=%s/user.pin",
					 module_path, dir), &k), 0);
	ck_assert_int_eq(token_key_certificate(k, &der, &len), 0);
	fd = open(der_path, O_RDONLY);
	flen = read(fd, file, sizeof(file));
	close(fd);
	ck_assert_int_gt(flen, 0);
	ck_assert_uint_eq(len, (size_t)flen);
	ck_assert_mem_eq(der, file, len);
	free(der);
	/* Signing still works in the session the certificate was read in. */
	sign_and_verify(dir, k, "ec256", 64);
	token_set_free(set);
	restore_conf();
}
END_TEST

/* ---- faults, through the fault-injecting module (tests/fakes/README.md) ----
 * Each test runs in its own process (Check forks), which loads the module
 * afresh with its own control file and call log. */

static char control[256], calls[256];

static long long mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void faults(const char *text)
{
	char tmp[300];

	snprintf(tmp, sizeof(tmp), "%s.tmp", control);
	write_file(tmp, text, 0600);
	ck_assert_int_eq(rename(tmp, control), 0);
}

/* Lines of the call log equal to line, from line number `from` on. */
static int count_calls(const char *line, int from)
{
	char buf[256];
	int n = 0, at = 0;
	FILE *f = fopen(calls, "r");

	if (!f)
		return 0;
	while (fgets(buf, sizeof(buf), f)) {
		buf[strcspn(buf, "\n")] = '\0';
		if (at++ >= from && strcmp(buf, line) == 0)
			n++;
	}
	fclose(f);
	return n;
}

static int log_lines(void)
{
	char buf[256];
	int n = 0;
	FILE *f = fopen(calls, "r");

	while (f && fgets(buf, sizeof(buf), f))
		n++;
	if (f)
		fclose(f);
	return n;
}

/* A set of `sessions` sessions holding the shared token's ec256 key through
 * the fault-injecting module; calls into it hang no longer than 300 ms. */
static struct token_set *faulty_set(unsigned sessions, struct token_key **k)
{
	struct token_set *set = new_set(sessions);

	snprintf(control, sizeof(control), "%s/control-%d", base, (int)getpid());
	snprintf(calls, sizeof(calls), "%s/calls-%d", base, (int)getpid());
	setenv("FAULTY_PKCS11_MODULE", module_path, 1);
	setenv("FAULTY_PKCS11_CONTROL", control, 1);
	setenv("FAULTY_PKCS11_LOG", calls, 1);
	faults("");
	ck_assert_msg(access(faulty_path, R_OK) == 0, "no fault-injecting module at %s "
		      "(build it, or set FAULTY_PKCS11_PATH)", faulty_path);
	token_set_timeout(set, 300);
	ck_assert_int_eq(add(set, uri_of("pkcs11:token=popsign-test;object=ec256;type=private"
					 "?module-path=%s&pin-source=file:%s/user.pin",
					 faulty_path, shared), k), 0);
	sign_and_verify(shared, *k, "ec256", 64);
	return set;
}

/* Runs the maintenance loop until k's state is want, at most ms. */
static bool maintain_until(struct token_set *set, struct token_key *k, const char *want, int ms)
{
	long long end = mono_ms() + ms;
	const char *state = NULL;

	for (;;) {
		(void)token_key_state(k, &state);
		if (strcmp(state, want) == 0)
			return true;
		if (mono_ms() > end)
			return false;
		usleep(token_set_maintain(set) * 1000u);
	}
}

struct counted {
	const char *name;
	unsigned long long n;
};

static void count_cb(void *ctx, const char *name, unsigned long long n)
{
	struct counted *c = ctx;

	if (strcmp(name, c->name) == 0)
		c->n = n;
}

START_TEST(device_gone_fails_fast_and_recovers)
{
	struct token_key *k = NULL;
	struct token_set *set = faulty_set(2, &k);
	struct counted removed = { "CKR_DEVICE_REMOVED", 0 };
	const char *state = NULL;
	uint8_t sig[TOKEN_SIG_MAX];
	size_t len = 0;
	long long t0;
	int lines;

	faults("* fail CKR_DEVICE_REMOVED\n");
	ck_assert_int_eq(sign_msg(k, "ec256", "m", 1, sig, &len), PS_E_TOKEN);
	ck_assert_int_eq(token_key_state(k, &state), PS_E_TOKEN);
	ck_assert_str_eq(state, "token not present");
	token_errors_foreach(count_cb, &removed);
	ck_assert_uint_ge(removed.n, 1);
	/* While failed, signatures fail at once without calling the module. */
	lines = log_lines();
	t0 = mono_ms();
	for (int i = 0; i < 100; i++)
		ck_assert_int_eq(sign_msg(k, "ec256", "m", 1, sig, &len), PS_E_TOKEN);
	ck_assert_int_lt(mono_ms() - t0, 100);
	ck_assert_int_eq(log_lines(), lines);
	/* Recovery attempts fail while the device is away, then succeed. */
	ck_assert(!maintain_until(set, k, "ready", 1200));
	ck_assert_int_eq(count_calls("C_Login CKR_OK", 0), 1);
	lines = log_lines();
	faults("");
	ck_assert_msg(maintain_until(set, k, "ready", 6000), "not recovered");
	ck_assert_int_eq(count_calls("C_Login CKR_OK", lines), 1);
	sign_and_verify(shared, k, "ec256", 64);
	sign_and_verify(shared, k, "ec256", 64);
	ck_assert_int_eq(count_calls("C_Login CKR_OK", lines), 1);
	token_set_free(set);
}
END_TEST

START_TEST(probe_notices_without_signatures)
{
	struct token_key *k = NULL;
	struct token_set *set = faulty_set(1, &k);

	faults("* fail CKR_TOKEN_NOT_PRESENT\n");
	/* The probe comes at most every 2 s: C_GetSessionInfo, C_GetTokenInfo. */
	ck_assert_msg(maintain_until(set, k, "token not present", 3000), "probe missed it");
	ck_assert_int_ge(count_calls("C_GetSessionInfo CKR_TOKEN_NOT_PRESENT", 0), 1);
	faults("");
	ck_assert(maintain_until(set, k, "ready", 6000));
	sign_and_verify(shared, k, "ec256", 64);
	token_set_free(set);
}
END_TEST

START_TEST(uninitialised_module_is_reinitialised)
{
	struct token_key *k = NULL;
	struct token_set *set = faulty_set(2, &k);
	uint8_t sig[TOKEN_SIG_MAX];
	size_t len = 0;

	faults("* fail CKR_CRYPTOKI_NOT_INITIALIZED\n");
	ck_assert_int_eq(sign_msg(k, "ec256", "m", 1, sig, &len), PS_E_TOKEN);
	ck_assert(maintain_until(set, k, "module not initialised", 100));
	ck_assert(!maintain_until(set, k, "ready", 600));
	faults("");
	ck_assert(maintain_until(set, k, "ready", 6000));
	/* C_Finalize + C_Initialize, and the handles of before were dropped. */
	ck_assert_int_ge(count_calls("C_Finalize CKR_OK", 0), 1);
	ck_assert_int_ge(count_calls("C_Initialize CKR_OK", 0), 2);
	sign_and_verify(shared, k, "ec256", 64);
	token_set_free(set);
}
END_TEST

struct signer_arg {
	struct token_key *k;
	int rounds;
	int failures;
	int result;
};

static void *sign_rounds(void *p)
{
	struct signer_arg *a = p;
	static const char msg[] = "to be signed";

	for (int i = 0; i < a->rounds; i++) {
		uint8_t sig[TOKEN_SIG_MAX];
		size_t len = 0;

		a->result = sign_msg(a->k, "ec256", msg, sizeof(msg), sig, &len);
		if (a->result != 0 || !verify(shared, "ec256", msg, sizeof(msg), sig, len))
			a->failures++;
	}
	return NULL;
}

START_TEST(login_lost_is_redone_once)
{
	struct token_key *k = NULL;
	struct token_set *set = faulty_set(2, &k);
	struct signer_arg a[2] = { { k, 20, 0, 0 }, { k, 20, 0, 0 } };
	pthread_t th[2];
	int lines = log_lines();

	faults("C_Sign fail CKR_USER_NOT_LOGGED_IN once\n");
	sign_and_verify(shared, k, "ec256", 64);
	ck_assert_int_eq(count_calls("C_Login CKR_OK", lines), 1);
	/* Both sessions find the key again after the new login. */
	for (int i = 0; i < 2; i++)
		ck_assert_int_eq(pthread_create(&th[i], NULL, sign_rounds, &a[i]), 0);
	for (int i = 0; i < 2; i++) {
		pthread_join(th[i], NULL);
		ck_assert_int_eq(a[i].failures, 0);
	}
	ck_assert_int_eq(count_calls("C_Login CKR_OK", lines), 1);
	ck_assert_int_eq(count_calls("C_SignInit CKR_OBJECT_HANDLE_INVALID", lines), 0);
	token_set_free(set);
}
END_TEST

START_TEST(pin_refused_is_final)
{
	struct token_key *k = NULL;
	struct token_set *set = faulty_set(1, &k);
	const char *state = NULL;
	uint8_t sig[TOKEN_SIG_MAX];
	size_t len = 0;
	int lines;

	faults("C_Login fail CKR_PIN_INCORRECT\nC_Sign fail CKR_USER_NOT_LOGGED_IN once\n");
	ck_assert_int_eq(sign_msg(k, "ec256", "m", 1, sig, &len), PS_E_TOKEN);
	ck_assert_int_eq(count_calls("C_Login CKR_PIN_INCORRECT", 0), 1);
	ck_assert_int_eq(token_key_state(k, &state), PS_E_PIN);
	ck_assert_str_eq(state, "PIN refused");
	lines = log_lines();
	faults("");
	ck_assert(!maintain_until(set, k, "ready", 2500));
	ck_assert_int_eq(sign_msg(k, "ec256", "m", 1, sig, &len), PS_E_TOKEN);
	ck_assert_int_eq(token_key_state(k, &state), PS_E_PIN);
	/* Nothing at all was asked of the module since. */
	ck_assert_int_eq(log_lines(), lines);
	token_set_free(set);
}
END_TEST

START_TEST(hung_call_makes_others_fail_fast)
{
	struct token_key *k = NULL;
	struct token_set *set = faulty_set(2, &k);
	struct signer_arg a = { k, 1, 0, -1 };
	const char *state = NULL;
	uint8_t sig[TOKEN_SIG_MAX];
	size_t len = 0;
	long long t0;
	pthread_t th;

	faults("C_Sign hang\n");
	ck_assert_int_eq(pthread_create(&th, NULL, sign_rounds, &a), 0);
	usleep(100 * 1000);
	ck_assert_uint_eq(token_set_sessions_in_use(set), 1);
	ck_assert_int_eq(token_key_state(k, &state), 0);
	/* Past the 300 ms timeout the token is "not responding". */
	usleep(300 * 1000);
	ck_assert_int_eq(token_key_state(k, &state), PS_E_TOKEN);
	ck_assert_str_eq(state, "not responding");
	t0 = mono_ms();
	ck_assert_int_eq(sign_msg(k, "ec256", "m", 1, sig, &len), PS_E_TOKEN);
	ck_assert_int_lt(mono_ms() - t0, 50);
	faults("");
	pthread_join(th, NULL);
	/* The hung call returned what the module said when released. */
	ck_assert_int_eq(a.result, 0);
	ck_assert_int_eq(a.failures, 0);
	ck_assert_int_eq(token_key_state(k, &state), 0);
	ck_assert_uint_eq(token_set_sessions_in_use(set), 0);
	sign_and_verify(shared, k, "ec256", 64);
	token_set_free(set);
}
END_TEST

START_TEST(other_failures_leave_the_token_ready)
{
	struct token_key *k = NULL;
	struct token_set *set = faulty_set(1, &k);
	const char *state = NULL;
	uint8_t sig[TOKEN_SIG_MAX];
	size_t len = 0;

	/* A code that says nothing about the token fails only this signature. */
	faults("C_Sign fail CKR_FUNCTION_FAILED once\n");
	ck_assert_int_eq(sign_msg(k, "ec256", "m", 1, sig, &len), PS_E_TOKEN);
	ck_assert_int_eq(token_key_state(k, &state), 0);
	sign_and_verify(shared, k, "ec256", 64);
	token_set_free(set);
}
END_TEST

START_TEST(free_null)
{
	token_set_free(NULL);
}
END_TEST

static Suite *token_suite(void)
{
	Suite *s = suite_create("token");
	TCase *tc = tcase_create("softhsm");

	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, sign_ec256);
	tcase_add_test(tc, sign_ec384);
	tcase_add_test(tc, sign_rsa2048);
	tcase_add_test(tc, key_by_id_only);
	tcase_add_test(tc, token_by_serial_and_model);
	tcase_add_test(tc, missing_token);
	tcase_add_test(tc, missing_key);
	tcase_add_test(tc, no_pin_source_sees_no_private_key);
	tcase_add_test(tc, two_keys_share_the_login);
	tcase_add_test(tc, every_key_pin_file_checked);
	tcase_add_test(tc, wrong_pin);
	tcase_add_test(tc, pin_file_problems);
	tcase_add_test(tc, module_problems);
	tcase_add_test(tc, unsupported_and_ambiguous_keys);
	tcase_add_test(tc, concurrent_signing);
	tcase_add_test(tc, session_lost_is_reopened);
	tcase_add_test(tc, certificate_from_token);
	tcase_add_test(tc, free_null);
	suite_add_tcase(s, tc);

	tc = tcase_create("faults");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, device_gone_fails_fast_and_recovers);
	tcase_add_test(tc, probe_notices_without_signatures);
	tcase_add_test(tc, uninitialised_module_is_reinitialised);
	tcase_add_test(tc, login_lost_is_redone_once);
	tcase_add_test(tc, pin_refused_is_final);
	tcase_add_test(tc, hung_call_makes_others_fail_fast);
	tcase_add_test(tc, other_failures_leave_the_token_ready);
	suite_add_tcase(s, tc);
	return s;
}

/* FAULTY_PKCS11_PATH, or the module meson builds beside this test in
 * <build>/tests/fakes. */
static void faulty_module_path(void)
{
	char exe[2048];
	ssize_t n;

	if (getenv("FAULTY_PKCS11_PATH")) {
		snprintf(faulty_path, sizeof(faulty_path), "%s", getenv("FAULTY_PKCS11_PATH"));
		return;
	}
	n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	exe[n > 0 ? n : 0] = '\0';
	if (strrchr(exe, '/'))
		*strrchr(exe, '/') = '\0';
	snprintf(faulty_path, sizeof(faulty_path), "%s/fakes/libpopsign-faulty-pkcs11.so", exe);
}

int main(void)
{
	char cmd[512];
	int failed;

	module_path = getenv("POPSIGN_TEST_MODULE") ?: "/usr/lib/softhsm/libsofthsm2.so";
	faulty_module_path();
	if (!getenv("MAKE_TOKEN")) {
		fprintf(stderr, "MAKE_TOKEN is not set (run through meson test)\n");
		return EXIT_FAILURE;
	}
	snprintf(base, sizeof(base), "/tmp/popsign-test-token-XXXXXX");
	if (!mkdtemp(base))
		return EXIT_FAILURE;
	snprintf(shared, sizeof(shared), "%s/shared", base);
	snprintf(cmd, sizeof(cmd), "\"%s\" %s ec256 rsa2048 ec384", getenv("MAKE_TOKEN"), shared);
	if (system(cmd) != 0) {
		fprintf(stderr, "%s failed\n", cmd);
		failed = 1;
		goto out;
	}
	restore_conf();
	failed = check_run(token_suite());
out:
	snprintf(cmd, sizeof(cmd), "rm -rf %s", base);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", base);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
