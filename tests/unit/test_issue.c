/* cacert and issue: CA certificates made here with OpenSSL, verification
 * certificates issued through a sign callback that holds the CA key, and every
 * field checked, by OpenSSL's parser and by `openssl verify`. */
#include <check.h>
#include <ctype.h>
#include <limits.h> /* before openssl/err.h, which uses INT_MAX without it */
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509v3.h>

#include "cacert.h"
#include "error.h"
#include "issue.h"
#include "text.h"
#include "check_run.h"

#define CODE48 "0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF"
#define VALIDITY 86400u
#define CA_NOT_BEFORE_AGO 86400
#define CA_LIFETIME (365 * 86400)

struct test_ca {
	const char *name;       /* key kind and file stem */
	const char *algorithm;  /* what ca_cert must say */
	int sig_nid;            /* what the issued certificate must carry */
	const char *ski;        /* the CA's subjectKeyIdentifier: "hash", hex, or none */
	EVP_PKEY *key;
	EVP_PKEY *other;        /* same kind, different key */
	char path[256];         /* PEM */
	char der_path[256];
	time_t not_before;
	time_t not_after;
};

static struct test_ca cas[] = {
	{ .name = "ec256", .algorithm = "EC-P256", .sig_nid = NID_ecdsa_with_SHA256, .ski = "hash" },
	{ .name = "ec384", .algorithm = "EC-P384", .sig_nid = NID_ecdsa_with_SHA384, .ski = "A1B2C3D4E5F60718" },
	{ .name = "ec521", .algorithm = "EC-P521", .sig_nid = NID_ecdsa_with_SHA512, .ski = "hash" },
	{ .name = "rsa2048", .algorithm = "RSA-2048", .sig_nid = NID_sha256WithRSAEncryption, .ski = "hash" },
	{ .name = "rsa3072", .algorithm = "RSA-3072", .sig_nid = NID_sha256WithRSAEncryption, .ski = "00112233445566778899AABBCCDDEEFF0123456789" },
	{ .name = "ec256-noski", .algorithm = "EC-P256", .sig_nid = NID_ecdsa_with_SHA256, .ski = NULL },
	{ .name = "rsa2048-noski", .algorithm = "RSA-2048", .sig_nid = NID_sha256WithRSAEncryption, .ski = NULL },
};
#define N_CAS ((int)(sizeof(cas) / sizeof(cas[0])))

static char tmpdir[] = "/tmp/test_issue.XXXXXX";
static char ed25519_path[256], rsa1024_path[256], rsa2052_path[256], k256_path[256];
static char rsa2056_path[256];

/* ---- the sign callback: what the token does, done with OpenSSL ---- */

struct test_signer {
	EVP_PKEY *key;
	int calls;
	int fail_with;       /* returned instead of signing, if nonzero */
	int extra_len;       /* added to the signature length, to fake a bad token */
};

static int ec_der_to_raw(EVP_PKEY *key, const uint8_t *der, size_t der_len, uint8_t *out,
			 size_t cap, size_t *ret_len)
{
	const unsigned char *p = der;
	ECDSA_SIG *sig = d2i_ECDSA_SIG(NULL, &p, (long)der_len);
	size_t n = (size_t)(EVP_PKEY_get_bits(key) + 7) / 8;
	int ok;

	if (!sig || 2 * n > cap) {
		ECDSA_SIG_free(sig);
		return PS_E_CRYPTO;
	}
	ok = BN_bn2binpad(ECDSA_SIG_get0_r(sig), out, (int)n) == (int)n &&
	     BN_bn2binpad(ECDSA_SIG_get0_s(sig), out + n, (int)n) == (int)n;
	ECDSA_SIG_free(sig);
	*ret_len = 2 * n;
	return ok ? 0 : PS_E_CRYPTO;
}

static int test_sign(void *ctx, const uint8_t *in, size_t inlen, uint8_t *sig, size_t sig_cap,
		     size_t *siglen)
{
	struct test_signer *s = ctx;
	bool rsa = EVP_PKEY_get_base_id(s->key) == EVP_PKEY_RSA;
	EVP_PKEY_CTX *pctx = NULL;
	uint8_t buf[1024];
	size_t len = sizeof(buf);
	int r = PS_E_CRYPTO;

	__atomic_fetch_add(&s->calls, 1, __ATOMIC_SEQ_CST);
	if (s->fail_with)
		return s->fail_with;
	pctx = EVP_PKEY_CTX_new_from_pkey(NULL, s->key, NULL);
	if (!pctx || EVP_PKEY_sign_init(pctx) <= 0)
		goto out;
	/* RSA: like CKM_RSA_PKCS, pad and sign the DigestInfo we are given. */
	if (rsa && EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING) <= 0)
		goto out;
	if (EVP_PKEY_sign(pctx, buf, &len, in, inlen) <= 0)
		goto out;
	if (rsa) {
		if (len > sig_cap)
			goto out;
		memcpy(sig, buf, len);
		*siglen = len;
		r = 0;
	} else {
		/* Like CKM_ECDSA: r || s, fixed width. */
		r = ec_der_to_raw(s->key, buf, len, sig, sig_cap, siglen);
	}
	if (r == 0)
		*siglen += (size_t)s->extra_len;
out:
	EVP_PKEY_CTX_free(pctx);
	return r;
}

/* ---- making CAs ---- */

static EVP_PKEY *make_key(const char *name)
{
	if (strncmp(name, "ec256", 5) == 0)
		return EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	if (strncmp(name, "ec384", 5) == 0)
		return EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-384");
	if (strncmp(name, "ec521", 5) == 0)
		return EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-521");
	if (strncmp(name, "rsa2048", 7) == 0)
		return EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
	if (strncmp(name, "rsa3072", 7) == 0)
		return EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)3072);
	if (strcmp(name, "rsa1024") == 0)
		return EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)1024);
	if (strcmp(name, "rsa2052") == 0)
		return EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2052);
	if (strcmp(name, "rsa2056") == 0)
		return EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2056);
	if (strcmp(name, "k256") == 0)
		return EVP_PKEY_Q_keygen(NULL, NULL, "EC", "secp256k1");
	if (strcmp(name, "ed25519") == 0)
		return EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
	return NULL;
}

static void add_ext(X509 *x, int nid, const char *value)
{
	X509V3_CTX ctx;
	X509_EXTENSION *ext;

	X509V3_set_ctx(&ctx, x, x, NULL, NULL, 0);
	ext = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
	if (!ext || !X509_add_ext(x, ext, -1))
		abort();
	X509_EXTENSION_free(ext);
}

/* String types mixed and a multi-valued RDN: the issued certificate must
 * carry these bytes as they are, not a re-encoding of the name's text. */
static void make_ca_name(X509_NAME *n, const char *name)
{
	char cn[64];

	snprintf(cn, sizeof(cn), "Unit CA %s", name);
	if (!X509_NAME_add_entry_by_txt(n, "O", V_ASN1_PRINTABLESTRING,
					(const unsigned char *)"popsign test, Inc.", -1, -1, 0) ||
	    !X509_NAME_add_entry_by_txt(n, "OU", V_ASN1_UTF8STRING, (const unsigned char *)"unit", -1,
					-1, 0) ||
	    !X509_NAME_add_entry_by_txt(n, "L", V_ASN1_UTF8STRING, (const unsigned char *)"Berlin", -1,
					-1, -1) ||
	    !X509_NAME_add_entry_by_txt(n, "CN", V_ASN1_UTF8STRING, (const unsigned char *)cn, -1, -1,
					0))
		abort();
}

static X509 *make_ca_cert(EVP_PKEY *key, const char *name, const char *ski, time_t nb, time_t na)
{
	X509 *x = X509_new();
	bool ed = EVP_PKEY_get_base_id(key) == EVP_PKEY_ED25519;

	make_ca_name(X509_get_subject_name(x), name);
	if (!X509_set_version(x, X509_VERSION_3) || !ASN1_INTEGER_set(X509_get_serialNumber(x), 4711) ||
	    !X509_set_issuer_name(x, X509_get_subject_name(x)) ||
	    !ASN1_TIME_set(X509_getm_notBefore(x), nb) || !ASN1_TIME_set(X509_getm_notAfter(x), na) ||
	    !X509_set_pubkey(x, key))
		abort();
	add_ext(x, NID_basic_constraints, "critical,CA:TRUE");
	add_ext(x, NID_key_usage, "critical,keyCertSign,cRLSign");
	if (ski)
		add_ext(x, NID_subject_key_identifier, ski);
	if (!X509_sign(x, key, ed ? NULL : EVP_sha256()))
		abort();
	return x;
}

static void write_cert(X509 *x, const char *path, bool der)
{
	FILE *f = fopen(path, "wb");

	if (!f || !(der ? i2d_X509_fp(f, x) : PEM_write_X509(f, x)) || fclose(f) != 0)
		abort();
}

static void make_ca_file(const char *name, EVP_PKEY *key, const char *ski, time_t nb, time_t na,
			 char *path, size_t cap, char *der_path)
{
	X509 *x = make_ca_cert(key, name, ski, nb, na);

	snprintf(path, cap, "%s/%s.pem", tmpdir, name);
	write_cert(x, path, false);
	if (der_path) {
		snprintf(der_path, cap, "%s/%s.der", tmpdir, name);
		write_cert(x, der_path, true);
	}
	X509_free(x);
}

static void make_extra(const char *name, char *path, size_t cap)
{
	EVP_PKEY *key = make_key(name);
	time_t now = time(NULL);

	if (!key)
		abort();
	make_ca_file(name, key, "hash", now - CA_NOT_BEFORE_AGO, now + CA_LIFETIME, path, cap, NULL);
	EVP_PKEY_free(key);
}

static void setup_all(void)
{
	time_t now = time(NULL);

	if (!mkdtemp(tmpdir))
		abort();
	for (int k = 0; k < N_CAS; k++) {
		struct test_ca *c = &cas[k];

		c->key = make_key(c->name);
		c->other = make_key(c->name);
		if (!c->key || !c->other)
			abort();
		c->not_before = now - CA_NOT_BEFORE_AGO;
		c->not_after = now + CA_LIFETIME;
		make_ca_file(c->name, c->key, c->ski, c->not_before, c->not_after, c->path,
			     sizeof(c->path), c->der_path);
	}
	make_extra("ed25519", ed25519_path, sizeof(ed25519_path));
	make_extra("rsa1024", rsa1024_path, sizeof(rsa1024_path));
	make_extra("rsa2052", rsa2052_path, sizeof(rsa2052_path));
	make_extra("rsa2056", rsa2056_path, sizeof(rsa2056_path));
	make_extra("k256", k256_path, sizeof(k256_path));
}

static void teardown_all(void)
{
	char cmd[512];

	for (int k = 0; k < N_CAS; k++) {
		EVP_PKEY_free(cas[k].key);
		EVP_PKEY_free(cas[k].other);
	}
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", tmpdir);
}

/* ---- helpers ---- */

static struct ca_cert *load_ca(const struct test_ca *c)
{
	struct ca_cert *ca = NULL;
	int r = ca_cert_load_file(c->path, &ca);

	ck_assert_msg(r == 0, "%s: ca_cert_load_file: %d", c->path, r);
	ck_assert_ptr_nonnull(ca);
	return ca;
}

static struct issuer *new_issuer(const struct ca_cert *ca, unsigned validity)
{
	struct issuer *i = NULL;
	int r = issuer_new(ca, validity, &i);

	ck_assert_msg(r == 0, "issuer_new: %d", r);
	ck_assert_ptr_nonnull(i);
	return i;
}

/* Runs cmd and returns its first line of output (static buffer). */
static const char *run_line(const char *cmd)
{
	static char line[1024];
	FILE *p = popen(cmd, "r");

	ck_assert_msg(p != NULL, "popen %s", cmd);
	line[0] = '\0';
	if (!fgets(line, sizeof(line), p))
		line[0] = '\0';
	ck_assert_msg(pclose(p) == 0, "%s failed: %s", cmd, line);
	line[strcspn(line, "\n")] = '\0';
	return line;
}

/* The hex after '=' in "SHA1 Fingerprint=AB:CD:...", colons dropped. */
static void fingerprint_from_openssl(const char *path, const char *digest, char *out, size_t cap)
{
	char cmd[512];
	const char *line, *eq;
	size_t n = 0;

	snprintf(cmd, sizeof(cmd), "openssl x509 -in '%s' -noout -fingerprint -%s", path, digest);
	line = run_line(cmd);
	eq = strchr(line, '=');
	ck_assert_msg(eq != NULL, "no fingerprint in \"%s\"", line);
	for (const char *p = eq + 1; *p && n + 1 < cap; p++)
		if (*p != ':')
			out[n++] = *p;
	out[n] = '\0';
}

static X509 *parse_der(const uint8_t *der, size_t len)
{
	const unsigned char *p = der;
	X509 *x = d2i_X509(NULL, &p, (long)len);

	ck_assert_ptr_nonnull(x);
	ck_assert_msg(p == der + len, "trailing bytes after the certificate");
	return x;
}

static size_t der_of_name(const X509_NAME *n, unsigned char **out)
{
	int len = i2d_X509_NAME(n, out);

	ck_assert_int_gt(len, 0);
	return (size_t)len;
}

static time_t asn1_time(const ASN1_TIME *t)
{
	struct tm tm;

	ck_assert(ASN1_TIME_to_tm(t, &tm));
	return timegm(&tm);
}

static struct issued *issue_ok(const struct issuer *i, const char *code, struct test_signer *s)
{
	struct issued *c = NULL;
	int r = issue_certificate(i, code, test_sign, s, &c);

	ck_assert_msg(r == 0, "issue_certificate(%s): %d", code, r);
	ck_assert_ptr_nonnull(c);
	return c;
}

/* The CA's key identifier as the issued AKI must carry it. */
static void expected_key_id(const struct test_ca *t, X509 *ca, unsigned char *out, unsigned *len)
{
	const ASN1_OCTET_STRING *ski = X509_get0_subject_key_id(ca);

	if (t->ski) {
		ck_assert_ptr_nonnull(ski);
		*len = (unsigned)ASN1_STRING_length(ski);
		memcpy(out, ASN1_STRING_get0_data(ski), *len);
	} else {
		ck_assert_ptr_null(ski);
		ck_assert(X509_pubkey_digest(ca, EVP_sha1(), out, len));
	}
}

/* ---- ca_cert ---- */

START_TEST(ca_cert_fields)
{
	const struct test_ca *t = &cas[_i];
	struct ca_cert *c = load_ca(t);
	char cmd[512], want[256], fp[128];
	unsigned char *der = NULL;
	int der_len;

	ck_assert_str_eq(c->algorithm, t->algorithm);
	/* RFC 2253: last RDN first, "+" inside an RDN, the comma escaped. */
	snprintf(want, sizeof(want), "CN=Unit CA %s,L=Berlin+OU=unit,O=popsign test\\, Inc.", t->name);
	ck_assert_str_eq(c->subject, want);
	snprintf(cmd, sizeof(cmd), "openssl x509 -in '%s' -noout -subject -nameopt RFC2253", t->path);
	snprintf(want, sizeof(want), "subject=%s", c->subject);
	ck_assert_str_eq(run_line(cmd), want);

	fingerprint_from_openssl(t->path, "sha1", fp, sizeof(fp));
	ck_assert_str_eq(c->sha1_thumbprint, fp);
	fingerprint_from_openssl(t->path, "sha256", fp, sizeof(fp));
	for (char *p = fp; *p; p++)
		*p = (char)tolower((unsigned char)*p);
	ck_assert_str_eq(c->sha256_fingerprint, fp);

	ck_assert_int_eq(c->not_before, t->not_before);
	ck_assert_int_eq(c->not_after, t->not_after);
	ck_assert_ptr_eq(c->pubkey, X509_get0_pubkey(c->x509));
	ck_assert(EVP_PKEY_eq(c->pubkey, t->key) == 1);

	der_len = i2d_X509(c->x509, &der);
	ck_assert_int_eq((size_t)der_len, c->der_len);
	ck_assert_mem_eq(der, c->der, c->der_len);
	OPENSSL_free(der);
	ck_assert_ptr_nonnull(strstr(c->pem, "-----BEGIN CERTIFICATE-----\n"));
	ca_cert_free(c);
}
END_TEST

START_TEST(ca_cert_pem_and_der_agree)
{
	const struct test_ca *t = &cas[_i];
	struct ca_cert *p = load_ca(t), *d = NULL, *m = NULL;
	BIO *bio = BIO_new_mem_buf(p->pem, -1);
	X509 *x = PEM_read_bio_X509(bio, NULL, NULL, NULL);
	unsigned char *der = NULL;
	int len;

	ck_assert_int_eq(ca_cert_load_file(t->der_path, &d), 0);
	ck_assert_uint_eq(d->der_len, p->der_len);
	ck_assert_mem_eq(d->der, p->der, p->der_len);
	ck_assert_str_eq(d->pem, p->pem);
	ck_assert_str_eq(d->sha1_thumbprint, p->sha1_thumbprint);
	ck_assert_int_eq(ca_cert_from_der(p->der, p->der_len, &m), 0);
	ck_assert_str_eq(m->subject, p->subject);
	/* The PEM text decodes to the same bytes. */
	ck_assert_ptr_nonnull(x);
	len = i2d_X509(x, &der);
	ck_assert_uint_eq((size_t)len, p->der_len);
	ck_assert_mem_eq(der, p->der, p->der_len);
	OPENSSL_free(der);
	X509_free(x);
	BIO_free(bio);
	ca_cert_free(m);
	ca_cert_free(d);
	ca_cert_free(p);
}
END_TEST

static void load_fails(const char *path, int want)
{
	struct ca_cert *sentinel = (struct ca_cert *)0x1, *c = sentinel;
	int r = ca_cert_load_file(path, &c);

	ck_assert_msg(r == want, "%s: got %d, want %d", path, r, want);
	ck_assert_ptr_eq(c, sentinel);
}

static void write_text(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");

	ck_assert_ptr_nonnull(f);
	fputs(text, f);
	ck_assert_int_eq(fclose(f), 0);
}

START_TEST(ca_cert_unsupported_keys)
{
	load_fails(ed25519_path, PS_E_UNSUPPORTED);
	load_fails(rsa1024_path, PS_E_UNSUPPORTED);
	load_fails(rsa2052_path, PS_E_UNSUPPORTED); /* not whole bytes */
	load_fails(k256_path, PS_E_UNSUPPORTED);
}
END_TEST

START_TEST(ca_cert_rsa_any_whole_byte_size)
{
	struct ca_cert *c = NULL;

	ck_assert_int_eq(ca_cert_load_file(rsa2056_path, &c), 0);
	ck_assert_str_eq(c->algorithm, "RSA-2056");
	ca_cert_free(c);
}
END_TEST

START_TEST(ca_cert_not_certificates)
{
	char path[300];
	EVP_PKEY *key = cas[0].key;
	FILE *f;

	snprintf(path, sizeof(path), "%s/missing.pem", tmpdir);
	load_fails(path, PS_E_NOT_FOUND);
	snprintf(path, sizeof(path), "%s/text.pem", tmpdir);
	write_text(path, "hello, this is not a certificate\n");
	load_fails(path, PS_E_INVALID_REQUEST);
	snprintf(path, sizeof(path), "%s/empty.pem", tmpdir);
	write_text(path, "");
	load_fails(path, PS_E_INVALID_REQUEST);
	/* A PEM file, but a private key. */
	snprintf(path, sizeof(path), "%s/key.pem", tmpdir);
	f = fopen(path, "w");
	ck_assert_ptr_nonnull(f);
	ck_assert(PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL));
	ck_assert_int_eq(fclose(f), 0);
	load_fails(path, PS_E_INVALID_REQUEST);
	/* A truncated certificate. */
	snprintf(path, sizeof(path), "%s/cut.pem", tmpdir);
	write_text(path, "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n");
	load_fails(path, PS_E_INVALID_REQUEST);
	/* A directory. */
	load_fails(tmpdir, PS_E_INVALID_REQUEST);
}
END_TEST

START_TEST(ca_cert_der_trailing_bytes)
{
	struct ca_cert *c = load_ca(&cas[0]), *sentinel = (struct ca_cert *)0x1, *d = sentinel;
	uint8_t *buf = malloc(c->der_len + 1);

	ck_assert_ptr_nonnull(buf);
	memcpy(buf, c->der, c->der_len);
	buf[c->der_len] = 0;
	ck_assert_int_eq(ca_cert_from_der(buf, c->der_len + 1, &d), PS_E_INVALID_REQUEST);
	ck_assert_int_eq(ca_cert_from_der(buf, c->der_len - 1, &d), PS_E_INVALID_REQUEST);
	ck_assert_int_eq(ca_cert_from_der(buf, 0, &d), PS_E_INVALID_REQUEST);
	ck_assert_ptr_eq(d, sentinel);
	free(buf);
	ca_cert_free(c);
	ca_cert_free(NULL);
}
END_TEST

/* ---- issue ---- */

static void check_extensions(const struct test_ca *t, X509 *leaf, X509 *ca)
{
	static const int nids[] = { NID_basic_constraints, NID_key_usage, NID_subject_key_identifier,
				    NID_authority_key_identifier };
	static const int critical[] = { 1, 1, 0, 0 };
	static const unsigned char bc_der[] = { 0x30, 0x00 };            /* CA:FALSE, no pathlen */
	static const unsigned char ku_der[] = { 0x03, 0x02, 0x07, 0x80 }; /* digitalSignature */
	unsigned char want_id[EVP_MAX_MD_SIZE], leaf_id[EVP_MAX_MD_SIZE];
	unsigned want_len = 0, leaf_len = 0;
	ASN1_OCTET_STRING *ski;
	AUTHORITY_KEYID *aki;

	ck_assert_int_eq(X509_get_ext_count(leaf), 4);
	for (int k = 0; k < 4; k++) {
		X509_EXTENSION *e = X509_get_ext(leaf, k);

		ck_assert_int_eq(OBJ_obj2nid(X509_EXTENSION_get_object(e)), nids[k]);
		ck_assert_int_eq(X509_EXTENSION_get_critical(e), critical[k]);
	}
	ck_assert_int_eq(ASN1_STRING_length(X509_EXTENSION_get_data(X509_get_ext(leaf, 0))), 2);
	ck_assert_mem_eq(ASN1_STRING_get0_data(X509_EXTENSION_get_data(X509_get_ext(leaf, 0))), bc_der, 2);
	ck_assert_int_eq(ASN1_STRING_length(X509_EXTENSION_get_data(X509_get_ext(leaf, 1))), 4);
	ck_assert_mem_eq(ASN1_STRING_get0_data(X509_EXTENSION_get_data(X509_get_ext(leaf, 1))), ku_der, 4);
	ck_assert_uint_eq(X509_get_key_usage(leaf), KU_DIGITAL_SIGNATURE);

	/* SKI: SHA-1 of the subject key bits. */
	ski = X509_get_ext_d2i(leaf, NID_subject_key_identifier, NULL, NULL);
	ck_assert_ptr_nonnull(ski);
	ck_assert(X509_pubkey_digest(leaf, EVP_sha1(), leaf_id, &leaf_len));
	ck_assert_int_eq(ASN1_STRING_length(ski), (int)leaf_len);
	ck_assert_mem_eq(ASN1_STRING_get0_data(ski), leaf_id, leaf_len);
	ASN1_OCTET_STRING_free(ski);

	/* AKI: key id only, the CA's. */
	aki = X509_get_ext_d2i(leaf, NID_authority_key_identifier, NULL, NULL);
	ck_assert_ptr_nonnull(aki);
	ck_assert_ptr_nonnull(aki->keyid);
	ck_assert_ptr_null(aki->issuer);
	ck_assert_ptr_null(aki->serial);
	expected_key_id(t, ca, want_id, &want_len);
	ck_assert_int_eq(ASN1_STRING_length(aki->keyid), (int)want_len);
	ck_assert_mem_eq(ASN1_STRING_get0_data(aki->keyid), want_id, want_len);
	AUTHORITY_KEYID_free(aki);
}

static void check_names(X509 *leaf, X509 *ca, const char *code)
{
	X509_NAME *subject = X509_get_subject_name(leaf);
	X509_NAME_ENTRY *cn;
	const ASN1_STRING *value;
	unsigned char *a = NULL, *b = NULL;
	size_t alen, blen;

	ck_assert_int_eq(X509_NAME_entry_count(subject), 1);
	cn = X509_NAME_get_entry(subject, 0);
	ck_assert_int_eq(OBJ_obj2nid(X509_NAME_ENTRY_get_object(cn)), NID_commonName);
	value = X509_NAME_ENTRY_get_data(cn);
	ck_assert_int_eq(ASN1_STRING_type(value), V_ASN1_UTF8STRING);
	ck_assert_int_eq(ASN1_STRING_length(value), (int)strlen(code));
	ck_assert_mem_eq(ASN1_STRING_get0_data(value), code, strlen(code));

	alen = der_of_name(X509_get_issuer_name(leaf), &a);
	blen = der_of_name(X509_get_subject_name(ca), &b);
	ck_assert_uint_eq(alen, blen);
	ck_assert_mem_eq(a, b, alen);
	OPENSSL_free(a);
	OPENSSL_free(b);
}

static void check_serial(X509 *leaf, const struct issued *c)
{
	const ASN1_INTEGER *sn = X509_get0_serialNumber(leaf);
	char hex[33];

	ck_assert_int_eq(ASN1_STRING_type(sn), V_ASN1_INTEGER); /* not V_ASN1_NEG_INTEGER */
	ck_assert_int_eq(ASN1_STRING_length(sn), 16);
	ck_assert_int_eq(ASN1_STRING_get0_data(sn)[0] & 0x80, 0);
	ck_assert_int_ne(ASN1_STRING_get0_data(sn)[0], 0);
	ck_assert_int_eq(i2d_ASN1_INTEGER(sn, NULL), 18);
	hex_encode(ASN1_STRING_get0_data(sn), 16, false, hex);
	ck_assert_str_eq(c->serial_hex, hex);
}

static void check_validity(X509 *leaf, const struct issued *c, time_t before, time_t after,
			   unsigned validity)
{
	time_t nb = asn1_time(X509_get0_notBefore(leaf)), na = asn1_time(X509_get0_notAfter(leaf));

	ck_assert_int_eq(nb, c->not_before);
	ck_assert_int_eq(na, c->not_after);
	ck_assert_int_ge(nb, before - ISSUE_BACKDATE);
	ck_assert_int_le(nb, after - ISSUE_BACKDATE);
	ck_assert_int_ge(na, before + (time_t)validity);
	ck_assert_int_le(na, after + (time_t)validity);
}

static void check_signature(const struct test_ca *t, X509 *leaf, X509 *ca)
{
	const X509_ALGOR *outer, *inner = X509_get0_tbs_sigalg(leaf);
	const ASN1_OBJECT *obj;
	int ptype;
	bool rsa = t->sig_nid == NID_sha256WithRSAEncryption;

	ck_assert_int_eq(X509_get_signature_nid(leaf), t->sig_nid);
	X509_get0_signature(NULL, &outer, leaf);
	ck_assert_int_eq(X509_ALGOR_cmp(outer, inner), 0);
	X509_ALGOR_get0(&obj, &ptype, NULL, outer);
	ck_assert_int_eq(ptype, rsa ? V_ASN1_NULL : V_ASN1_UNDEF);
	ck_assert_int_eq(X509_verify(leaf, X509_get0_pubkey(ca)), 1);
	ck_assert_int_ne(X509_verify(leaf, t->other), 1);
	ERR_clear_error();
}

static void check_subject_key(X509 *leaf)
{
	EVP_PKEY *k = X509_get0_pubkey(leaf);
	char group[64];

	ck_assert_ptr_nonnull(k);
	ck_assert_int_eq(EVP_PKEY_get_base_id(k), EVP_PKEY_EC);
	ck_assert(EVP_PKEY_get_group_name(k, group, sizeof(group), NULL));
	ck_assert_int_eq(OBJ_txt2nid(group), NID_X9_62_prime256v1);
}

static void check_encodings(X509 *leaf, const struct issued *c)
{
	BIO *bio = BIO_new_mem_buf(c->pem, -1);
	X509 *p = PEM_read_bio_X509(bio, NULL, NULL, NULL);
	unsigned char md[EVP_MAX_MD_SIZE], *der = NULL;
	unsigned md_len = 0;
	char hex[65];
	int len;

	ck_assert_ptr_nonnull(p);
	len = i2d_X509(p, &der);
	ck_assert_uint_eq((size_t)len, c->der_len);
	ck_assert_mem_eq(der, c->der, c->der_len);
	OPENSSL_free(der);
	X509_free(p);
	BIO_free(bio);
	/* The PEM is exactly what OpenSSL writes for it. */
	bio = BIO_new(BIO_s_mem());
	ck_assert(PEM_write_bio_X509(bio, leaf));
	ck_assert_int_eq(BIO_write(bio, "", 1), 1);
	{
		char *text = NULL;

		BIO_get_mem_data(bio, &text);
		ck_assert_str_eq(c->pem, text);
	}
	BIO_free(bio);
	ck_assert(EVP_Digest(c->der, c->der_len, md, &md_len, EVP_sha256(), NULL));
	hex_encode(md, md_len, false, hex);
	ck_assert_str_eq(c->sha256_fingerprint, hex);
	ck_assert_int_eq(X509_get_version(leaf), X509_VERSION_3);
}

static void openssl_verify(const struct test_ca *t, const struct issued *c)
{
	char path[300], cmd[800], want[320];
	FILE *f;

	snprintf(path, sizeof(path), "%s/leaf-%s-%ld.pem", tmpdir, t->name, (long)getpid());
	f = fopen(path, "w");
	ck_assert_ptr_nonnull(f);
	fputs(c->pem, f);
	ck_assert_int_eq(fclose(f), 0);
	snprintf(cmd, sizeof(cmd), "openssl verify -CAfile '%s' '%s' 2>&1", t->path, path);
	snprintf(want, sizeof(want), "%s: OK", path);
	ck_assert_str_eq(run_line(cmd), want);
	unlink(path);
}

START_TEST(issue_every_field)
{
	const struct test_ca *t = &cas[_i];
	struct ca_cert *ca = load_ca(t);
	struct issuer *i = new_issuer(ca, VALIDITY);
	struct test_signer s = { .key = t->key };
	time_t before = time(NULL);
	struct issued *c = issue_ok(i, CODE48, &s);
	time_t after = time(NULL);
	X509 *leaf = parse_der(c->der, c->der_len);

	ck_assert_int_eq(s.calls, 1);
	check_names(leaf, ca->x509, CODE48);
	check_serial(leaf, c);
	check_validity(leaf, c, before, after, VALIDITY);
	check_extensions(t, leaf, ca->x509);
	check_signature(t, leaf, ca->x509);
	check_subject_key(leaf);
	check_encodings(leaf, c);
	openssl_verify(t, c);
	X509_free(leaf);
	issued_free(c);
	issuer_free(i);
	ca_cert_free(ca);
}
END_TEST

static int cmp_serial(const void *a, const void *b)
{
	return strcmp(a, b);
}

START_TEST(issue_serials_distinct)
{
	const struct test_ca *t = &cas[_i];
	struct ca_cert *ca = load_ca(t);
	struct issuer *i = new_issuer(ca, 30 * 86400);
	struct test_signer s = { .key = t->key };
	static char serials[100][33];

	for (int k = 0; k < 100; k++) {
		/* Codes from 1 to 64 characters, all accepted. */
		char code[65];
		int len = 1 + k % 64;
		struct issued *c;
		X509 *leaf;

		for (int n = 0; n < len; n++)
			code[n] = "0123456789ABCDEFabcdefXYZxyz"[(k + n) % 28];
		code[len] = '\0';
		c = issue_ok(i, code, &s);
		leaf = parse_der(c->der, c->der_len);
		ck_assert_int_eq(X509_verify(leaf, ca->pubkey), 1);
		check_serial(leaf, c);
		check_names(leaf, ca->x509, code);
		ck_assert_int_eq(c->not_after - c->not_before, 30 * 86400 + ISSUE_BACKDATE);
		memcpy(serials[k], c->serial_hex, 33);
		X509_free(leaf);
		issued_free(c);
	}
	qsort(serials, 100, sizeof(serials[0]), cmp_serial);
	for (int k = 1; k < 100; k++)
		ck_assert_str_ne(serials[k - 1], serials[k]);
	ck_assert_int_eq(s.calls, 100);
	issuer_free(i);
	ca_cert_free(ca);
}
END_TEST

START_TEST(issue_invalid_codes)
{
	static const char *bad[] = {
		"",
		"0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF0", /* 65 */
		"ab/cd", "a=b", "abc\n", "abc\r", "ab cd", "caf\xc3\xa9", "\xff", "ab,CN=x", "ab+cd",
		NULL,
	};
	struct ca_cert *ca = load_ca(&cas[0]);
	struct issuer *i = new_issuer(ca, VALIDITY);
	struct test_signer s = { .key = cas[0].key };

	for (size_t k = 0; k < sizeof(bad) / sizeof(bad[0]); k++) {
		struct issued *sentinel = (struct issued *)0x1, *c = sentinel;
		int r = issue_certificate(i, bad[k], test_sign, &s, &c);

		ck_assert_msg(r == PS_E_INVALID_CODE, "code %zu: got %d", k, r);
		ck_assert_ptr_eq(c, sentinel);
	}
	ck_assert_int_eq(s.calls, 0);
	issuer_free(i);
	ca_cert_free(ca);
}
END_TEST

START_TEST(issue_sign_errors)
{
	const struct test_ca *t = &cas[_i];
	struct ca_cert *ca = load_ca(t);
	struct issuer *i = new_issuer(ca, VALIDITY);
	struct test_signer fail = { .key = t->key, .fail_with = PS_E_TOKEN };
	struct test_signer positive = { .key = t->key, .fail_with = 1 };
	struct test_signer longer = { .key = t->key, .extra_len = 1 };
	struct test_signer shorter = { .key = t->key, .extra_len = -1 };
	struct issued *sentinel = (struct issued *)0x1, *c = sentinel;

	ck_assert_int_eq(issue_certificate(i, CODE48, test_sign, &fail, &c), PS_E_TOKEN);
	ck_assert_int_eq(fail.calls, 1);
	ck_assert_int_eq(issue_certificate(i, CODE48, test_sign, &positive, &c), PS_E_INTERNAL);
	/* A token answering with the wrong length must not yield a certificate. */
	ck_assert_int_eq(issue_certificate(i, CODE48, test_sign, &longer, &c), PS_E_CRYPTO);
	ck_assert_int_eq(issue_certificate(i, CODE48, test_sign, &shorter, &c), PS_E_CRYPTO);
	ck_assert_ptr_eq(c, sentinel);
	ck_assert_int_eq(ERR_peek_error(), 0);
	issuer_free(i);
	ca_cert_free(ca);
}
END_TEST

START_TEST(issue_wrong_key_does_not_verify)
{
	const struct test_ca *t = &cas[_i];
	struct ca_cert *ca = load_ca(t);
	struct issuer *i = new_issuer(ca, VALIDITY);
	struct test_signer s = { .key = t->other };
	struct issued *c = issue_ok(i, CODE48, &s);
	X509 *leaf = parse_der(c->der, c->der_len);

	/* issue_certificate trusts its callback; issuer_check_key is the guard. */
	ck_assert_int_ne(X509_verify(leaf, ca->pubkey), 1);
	ERR_clear_error();
	X509_free(leaf);
	issued_free(c);
	issuer_free(i);
	ca_cert_free(ca);
}
END_TEST

START_TEST(check_key)
{
	const struct test_ca *t = &cas[_i];
	/* A key of another kind and size: the signature length alone gives it away. */
	const struct test_ca *u = &cas[(_i + 1) % 5];
	struct ca_cert *ca = load_ca(t);
	struct issuer *i = new_issuer(ca, VALIDITY);
	struct test_signer good = { .key = t->key }, other = { .key = t->other };
	struct test_signer kind = { .key = u->key }, fail = { .key = t->key, .fail_with = PS_E_TOKEN };

	ck_assert_int_eq(issuer_check_key(i, test_sign, &good), 0);
	ck_assert_int_eq(issuer_check_key(i, test_sign, &other), PS_E_KEY_MISMATCH);
	ck_assert_int_eq(issuer_check_key(i, test_sign, &kind), PS_E_KEY_MISMATCH);
	ck_assert_int_eq(issuer_check_key(i, test_sign, &fail), PS_E_TOKEN);
	ck_assert_int_eq(good.calls, 1);
	ck_assert_int_eq(other.calls, 1);
	ck_assert_int_eq(ERR_peek_error(), 0);
	issuer_free(i);
	ca_cert_free(ca);
}
END_TEST

START_TEST(issuer_free_null)
{
	issuer_free(NULL);
	issued_free(NULL);
}
END_TEST

#define THREADS 4
#define PER_THREAD 50

struct worker {
	const struct issuer *issuer;
	EVP_PKEY *ca_key;
	struct test_signer *signer;
	int failures;
	char serials[PER_THREAD][33];
};

static void *worker_run(void *arg)
{
	struct worker *w = arg;

	for (int k = 0; k < PER_THREAD; k++) {
		struct issued *c = NULL;
		X509 *leaf = NULL;
		const unsigned char *p;

		if (issue_certificate(w->issuer, CODE48, test_sign, w->signer, &c) != 0) {
			w->failures++;
			continue;
		}
		p = c->der;
		leaf = d2i_X509(NULL, &p, (long)c->der_len);
		if (!leaf || X509_verify(leaf, w->ca_key) != 1)
			w->failures++;
		memcpy(w->serials[k], c->serial_hex, 33);
		X509_free(leaf);
		issued_free(c);
	}
	return NULL;
}

START_TEST(issue_concurrently)
{
	const struct test_ca *t = &cas[_i];
	struct ca_cert *ca = load_ca(t);
	struct issuer *i = new_issuer(ca, VALIDITY);
	struct test_signer s = { .key = t->key };
	static struct worker w[THREADS];
	static char all[THREADS * PER_THREAD][33];
	pthread_t th[THREADS];

	for (int k = 0; k < THREADS; k++) {
		w[k] = (struct worker){ .issuer = i, .ca_key = ca->pubkey, .signer = &s };
		ck_assert_int_eq(pthread_create(&th[k], NULL, worker_run, &w[k]), 0);
	}
	for (int k = 0; k < THREADS; k++)
		ck_assert_int_eq(pthread_join(th[k], NULL), 0);
	for (int k = 0; k < THREADS; k++) {
		ck_assert_int_eq(w[k].failures, 0);
		memcpy(all[k * PER_THREAD], w[k].serials, sizeof(w[k].serials));
	}
	ck_assert_int_eq(s.calls, THREADS * PER_THREAD);
	qsort(all, THREADS * PER_THREAD, sizeof(all[0]), cmp_serial);
	for (int k = 1; k < THREADS * PER_THREAD; k++)
		ck_assert_str_ne(all[k - 1], all[k]);
	issuer_free(i);
	ca_cert_free(ca);
}
END_TEST

/* ---- the DER itself: OpenSSL's encoders make the same bytes ---- */

/* Where the TBS sits inside a certificate's DER. */
static size_t tbs_in(const struct issued *c, const unsigned char **ret_tbs)
{
	const unsigned char *p = c->der, *tbs;
	long len = 0;
	int tag = 0, cls = 0;

	ck_assert_int_eq(ASN1_get_object(&p, &len, &tag, &cls, (long)c->der_len), V_ASN1_CONSTRUCTED);
	ck_assert_int_eq(tag, V_ASN1_SEQUENCE);
	tbs = p;
	ck_assert_int_eq(ASN1_get_object(&p, &len, &tag, &cls, (long)(c->der + c->der_len - p)),
			 V_ASN1_CONSTRUCTED);
	ck_assert_int_eq(tag, V_ASN1_SEQUENCE);
	*ret_tbs = tbs;
	return (size_t)(p - tbs) + (size_t)len;
}

static void add_reference_key(X509 *x, X509 *leaf)
{
	const ASN1_BIT_STRING *bits = X509_get0_pubkey_bitstr(leaf);
	unsigned char *point = OPENSSL_memdup(ASN1_STRING_get0_data(bits), (size_t)ASN1_STRING_length(bits));

	ck_assert_ptr_nonnull(point);
	ck_assert_int_eq(ASN1_STRING_length(bits), 65);
	ck_assert(X509_PUBKEY_set0_param(X509_get_X509_PUBKEY(x), OBJ_nid2obj(NID_X9_62_id_ecPublicKey),
					 V_ASN1_OBJECT, OBJ_nid2obj(NID_X9_62_prime256v1), point,
					 ASN1_STRING_length(bits)));
}

static void add_reference_extensions(X509 *x, const struct test_ca *t, X509 *ca)
{
	AUTHORITY_KEYID *akid = AUTHORITY_KEYID_new();
	unsigned char id[EVP_MAX_MD_SIZE];
	unsigned len = 0;

	add_ext(x, NID_basic_constraints, "critical,CA:FALSE");
	add_ext(x, NID_key_usage, "critical,digitalSignature");
	add_ext(x, NID_subject_key_identifier, "hash");
	expected_key_id(t, ca, id, &len);
	ck_assert_ptr_nonnull(akid);
	akid->keyid = ASN1_OCTET_STRING_new();
	ck_assert(akid->keyid && ASN1_OCTET_STRING_set(akid->keyid, id, (int)len));
	ck_assert_int_eq(X509_add1_ext_i2d(x, NID_authority_key_identifier, akid, 0, X509V3_ADD_APPEND), 1);
	AUTHORITY_KEYID_free(akid);
}

/* The TBS OpenSSL's X509 encoder makes for c's serial, times, code and
 * public key: the profile built field by field with OpenSSL's objects. */
static size_t reference_tbs(const struct test_ca *t, X509 *ca, X509 *leaf, const struct issued *c,
			    const char *code, unsigned char **out)
{
	X509 *x = X509_new();
	BIGNUM *bn = NULL;
	ASN1_INTEGER *serial;
	bool rsa = t->sig_nid == NID_sha256WithRSAEncryption;
	int len;

	ck_assert_ptr_nonnull(x);
	ck_assert_int_eq(BN_hex2bn(&bn, c->serial_hex), 32);
	serial = BN_to_ASN1_INTEGER(bn, NULL);
	ck_assert(serial && X509_set_serialNumber(x, serial));
	ck_assert(X509_set_version(x, X509_VERSION_3));
	ck_assert(X509_set_issuer_name(x, X509_get_subject_name(ca)));
	ck_assert(X509_NAME_add_entry_by_NID(X509_get_subject_name(x), NID_commonName, V_ASN1_UTF8STRING,
					     (const unsigned char *)code, -1, -1, 0));
	ck_assert(ASN1_TIME_set(X509_getm_notBefore(x), c->not_before));
	ck_assert(ASN1_TIME_set(X509_getm_notAfter(x), c->not_after));
	add_reference_key(x, leaf);
	add_reference_extensions(x, t, ca);
	ck_assert(X509_ALGOR_set0((X509_ALGOR *)X509_get0_tbs_sigalg(x), OBJ_nid2obj(t->sig_nid),
				  rsa ? V_ASN1_NULL : V_ASN1_UNDEF, NULL));
	len = i2d_re_X509_tbs(x, out);
	ck_assert_int_gt(len, 0);
	ASN1_INTEGER_free(serial);
	BN_free(bn);
	X509_free(x);
	return (size_t)len;
}

/* c's DER is OpenSSL's encoding of the profile, byte for byte, and is DER:
 * decoded and encoded again (the TBS forced to be re-encoded, not copied
 * from the input), it comes out unchanged. */
static void check_same_der(const struct test_ca *t, X509 *ca, const struct issued *c, const char *code)
{
	X509 *leaf = parse_der(c->der, c->der_len);
	const unsigned char *tbs;
	unsigned char *want = NULL, *again = NULL;
	size_t tbs_len = tbs_in(c, &tbs), want_len = reference_tbs(t, ca, leaf, c, code, &want);
	int len;

	ck_assert_uint_eq(tbs_len, want_len);
	ck_assert_mem_eq(tbs, want, tbs_len);
	len = i2d_X509(leaf, &again);
	ck_assert_uint_eq((size_t)len, c->der_len);
	ck_assert_mem_eq(again, c->der, c->der_len);
	OPENSSL_free(again);
	again = NULL;
	len = i2d_re_X509_tbs(leaf, &again);
	ck_assert_uint_eq((size_t)len, tbs_len);
	ck_assert_mem_eq(again, tbs, tbs_len);
	OPENSSL_free(again);
	OPENSSL_free(want);
	X509_free(leaf);
}

START_TEST(issue_same_der_as_openssl)
{
	const struct test_ca *t = &cas[_i];
	struct ca_cert *ca = load_ca(t);
	struct issuer *i = new_issuer(ca, VALIDITY);
	struct test_signer s = { .key = t->key };

	/* Every code length, so every length field takes its every size here. */
	for (int len = 1; len <= 64; len++) {
		char code[65];
		struct issued *c;

		for (int n = 0; n < len; n++)
			code[n] = "0123456789ABCDEFabcdefXYZxyz"[(len + n) % 28];
		code[len] = '\0';
		c = issue_ok(i, code, &s);
		check_same_der(t, ca->x509, c, code);
		issued_free(c);
	}
	issuer_free(i);
	ca_cert_free(ca);
}
END_TEST

#define Y2050 ((time_t)2524608000) /* 2050-01-01T00:00:00Z */

/* notAfter as RFC 5280 has it: UTCTime through 2049, GeneralizedTime from 2050. */
static void check_not_after_encoding(X509 *leaf, const struct issued *c)
{
	const ASN1_TIME *na = X509_get0_notAfter(leaf);
	bool utc = c->not_after < Y2050;
	char text[32];
	const char *want = text;
	struct tm tm;

	ck_assert_ptr_nonnull(gmtime_r(&c->not_after, &tm));
	ck_assert_uint_eq(strftime(text, sizeof(text), "%Y%m%d%H%M%SZ", &tm), 15);
	if (utc)
		want += 2; /* YYMMDDHHMMSSZ */
	ck_assert_int_eq(ASN1_STRING_type(na), utc ? V_ASN1_UTCTIME : V_ASN1_GENERALIZEDTIME);
	ck_assert_int_eq(ASN1_STRING_length(na), (int)strlen(want));
	ck_assert_mem_eq(ASN1_STRING_get0_data(na), want, strlen(want));
	ck_assert_int_eq(asn1_time(na), c->not_after);
	ck_assert_int_eq(ASN1_STRING_type(X509_get0_notBefore(leaf)), V_ASN1_UTCTIME);
}

START_TEST(issue_times_after_2049)
{
	const struct test_ca *t = &cas[_i];
	struct ca_cert *ca = load_ca(t);
	struct test_signer s = { .key = t->key };
	time_t now = time(NULL);
	/* notAfter an hour before 2050, a second before, at 2050 (or just after,
	 * as the clock moves on), and as late as validity goes (2150s). */
	const unsigned validity[] = { (unsigned)(Y2050 - 3600 - now), (unsigned)(Y2050 - 1 - now),
				      (unsigned)(Y2050 - now), UINT_MAX };
	bool seen_utc = false, seen_generalized = false;

	for (size_t k = 0; k < sizeof(validity) / sizeof(validity[0]); k++) {
		struct issuer *i = new_issuer(ca, validity[k]);
		struct issued *c = issue_ok(i, CODE48, &s);
		X509 *leaf = parse_der(c->der, c->der_len);

		ck_assert_int_eq(c->not_after - c->not_before, (time_t)validity[k] + ISSUE_BACKDATE);
		check_not_after_encoding(leaf, c);
		seen_utc |= c->not_after < Y2050;
		seen_generalized |= c->not_after >= Y2050;
		ck_assert_int_eq(X509_verify(leaf, ca->pubkey), 1);
		check_same_der(t, ca->x509, c, CODE48);
		X509_free(leaf);
		issued_free(c);
		issuer_free(i);
	}
	ck_assert(seen_utc && seen_generalized);
	ca_cert_free(ca);
}
END_TEST

/* A token's r || s with leading zero bytes and top bits set: the
 * certificate's ECDSA-Sig-Value must be what i2d_ECDSA_SIG() makes. */
struct fixed_sig {
	uint8_t raw[2 * 66];
	size_t len;
};

static int fixed_sign(void *ctx, const uint8_t *in, size_t inlen, uint8_t *sig, size_t sig_cap,
		      size_t *siglen)
{
	const struct fixed_sig *f = ctx;

	ck_assert_uint_le(f->len, sig_cap);
	memcpy(sig, f->raw, f->len);
	*siglen = f->len;
	return 0;
}

static void check_ecdsa_der(const struct issued *c, const struct fixed_sig *f)
{
	X509 *leaf = parse_der(c->der, c->der_len);
	const ASN1_BIT_STRING *bits = NULL;
	ECDSA_SIG *sig = ECDSA_SIG_new();
	BIGNUM *r = BN_bin2bn(f->raw, (int)(f->len / 2), NULL);
	BIGNUM *s = BN_bin2bn(f->raw + f->len / 2, (int)(f->len / 2), NULL);
	unsigned char *want = NULL;
	int len;

	ck_assert(sig && r && s && ECDSA_SIG_set0(sig, r, s));
	len = i2d_ECDSA_SIG(sig, &want);
	ck_assert_int_gt(len, 0);
	X509_get0_signature(&bits, NULL, leaf);
	ck_assert_int_eq(ASN1_STRING_length(bits), len);
	ck_assert_mem_eq(ASN1_STRING_get0_data(bits), want, (size_t)len);
	OPENSSL_free(want);
	ECDSA_SIG_free(sig);
	X509_free(leaf);
}

START_TEST(issue_ecdsa_signature_der)
{
	const struct test_ca *t = &cas[_i];
	size_t half = (size_t)(EVP_PKEY_get_bits(t->key) + 7) / 8;
	struct ca_cert *ca = load_ca(t);
	struct issuer *i = new_issuer(ca, VALIDITY);

	ck_assert_int_ne(t->sig_nid, NID_sha256WithRSAEncryption);
	for (int k = 0; k < 4; k++) {
		struct fixed_sig f = { .len = 2 * half };
		struct issued *c = NULL;

		memset(f.raw, 0x5a, f.len);
		if (k == 0) { /* r = 1: every leading zero goes */
			memset(f.raw, 0, half - 1);
			f.raw[half - 1] = 1;
			memset(f.raw + half, 0xff, half);
		} else if (k == 1) { /* r = 0x0080...: one zero goes, one stays */
			f.raw[0] = 0;
			f.raw[1] = 0x80;
			f.raw[half] = 0x7f;
		} else if (k == 2) { /* r = 0 */
			memset(f.raw, 0, half);
			f.raw[half] = 0x80;
		}
		ck_assert_int_eq(issue_certificate(i, CODE48, fixed_sign, &f, &c), 0);
		check_ecdsa_der(c, &f);
		issued_free(c);
	}
	issuer_free(i);
	ca_cert_free(ca);
}
END_TEST

static Suite *issue_suite(void)
{
	Suite *s = suite_create("issue");
	TCase *tc = tcase_create("ca_cert");

	tcase_add_loop_test(tc, ca_cert_fields, 0, N_CAS);
	tcase_add_loop_test(tc, ca_cert_pem_and_der_agree, 0, N_CAS);
	tcase_add_test(tc, ca_cert_unsupported_keys);
	tcase_add_test(tc, ca_cert_rsa_any_whole_byte_size);
	tcase_add_test(tc, ca_cert_not_certificates);
	tcase_add_test(tc, ca_cert_der_trailing_bytes);
	suite_add_tcase(s, tc);

	tc = tcase_create("issue");
	tcase_add_loop_test(tc, issue_every_field, 0, N_CAS);
	tcase_add_loop_test(tc, issue_serials_distinct, 0, N_CAS);
	tcase_add_test(tc, issue_invalid_codes);
	tcase_add_loop_test(tc, issue_sign_errors, 0, N_CAS);
	tcase_add_loop_test(tc, issue_wrong_key_does_not_verify, 0, N_CAS);
	tcase_add_loop_test(tc, check_key, 0, N_CAS);
	tcase_add_test(tc, issuer_free_null);
	tcase_add_loop_test(tc, issue_concurrently, 0, N_CAS);
	tcase_add_loop_test(tc, issue_same_der_as_openssl, 0, N_CAS);
	tcase_add_loop_test(tc, issue_times_after_2049, 0, N_CAS);
	/* cas[0] to cas[2]: the EC CAs, one per curve (RSA signatures go in as they are). */
	tcase_add_loop_test(tc, issue_ecdsa_signature_der, 0, 3);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	int failed;

	setup_all();
	failed = check_run(issue_suite());
	teardown_all();
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
