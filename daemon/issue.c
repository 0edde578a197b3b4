#include "issue.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/asn1.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/x509v3.h>

#include "code.h"
#include "error.h"
#include "text.h"

#define SERIAL_LEN 16
#define SIG_MAX 512         /* RSA-4096; an ECDSA-Sig-Value for P-521 is under 150 */
#define P256_POINT_LEN 65   /* uncompressed point: 04 || x || y */
#define KEY_ID_LEN 20       /* SHA-1, RFC 5280 section 4.2.1.2 method (1) */
/* The TBS beyond the CA's name, the signature algorithm and the constant
 * extensions: version 5, serial 18, validity at most 36, subject at most
 * 13 + CODE_MAX_LEN, key 91, subjectKeyIdentifier 31, headers at most 12.
 * The writer stops at the end of the buffer whatever this says. */
#define TBS_ROOM (256 + CODE_MAX_LEN)

/* DER identifier octets (X.690 8.1.2): universal tags, constructed ones with
 * bit 6 set, and the TBS extensions' context-specific [3]. */
#define DER_INTEGER 0x02
#define DER_BIT_STRING 0x03
#define DER_OCTET_STRING 0x04
#define DER_UTF8STRING 0x0c
#define DER_UTCTIME 0x17
#define DER_GENERALIZEDTIME 0x18
#define DER_SEQUENCE 0x30
#define DER_SET 0x31
#define DER_EXPLICIT_3 0xa3

/* DER DigestInfo header for SHA-256: the token's CKM_RSA_PKCS pads what we
 * give it and nothing more, so the hash's identifier is ours to add. */
static const uint8_t sha256_digest_info[] = {
	0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01,
	0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20,
};

struct sig_profile {
	const char *algorithm; /* as struct ca_cert names it */
	int sig_nid;
	const char *digest;
	size_t half_len;       /* EC: bytes of r and of s; 0 for RSA */
};

static const struct sig_profile profiles[] = {
	{ "EC-P256", NID_ecdsa_with_SHA256, "SHA256", 32 },
	{ "EC-P384", NID_ecdsa_with_SHA384, "SHA384", 48 },
	{ "EC-P521", NID_ecdsa_with_SHA512, "SHA512", 66 },
	{ "RSA-", NID_sha256WithRSAEncryption, "SHA256", 0 },
};

/* DER made once; OPENSSL_free()d. */
struct blob {
	uint8_t *data;
	size_t len;
};

/* Everything here is written once by issuer_new() and only read afterwards,
 * which is what makes issue_certificate() safe from several threads: the
 * group is only ever passed as const, and the rest is plain bytes. */
struct issuer {
	const struct ca_cert *ca;
	unsigned validity;
	bool rsa;
	int sig_nid;
	size_t sig_len;         /* raw signature: RSA modulus bytes, or |r| + |s| */
	EVP_MD *md;             /* the signature's hash */
	EVP_MD *sha1;           /* subject key identifiers */
	EVP_MD *sha256;         /* fingerprints */
	EC_GROUP *p256;         /* subject keys: its generator multiples are built in */
	struct blob name;       /* the CA subject, byte for byte */
	struct blob exts_head;  /* basicConstraints and keyUsage extensions */
	struct blob aki;        /* authorityKeyIdentifier extension */
	uint8_t alg_der[32];    /* the signature AlgorithmIdentifier, DER (TBS and Certificate) */
	size_t alg_der_len;
};

/* A time as its DER value's tag and contents. */
struct der_time {
	uint8_t tag;            /* DER_UTCTIME or DER_GENERALIZEDTIME */
	char text[16];          /* YYYYMMDDHHMMSSZ at most */
	size_t len;
};

/* What differs from one certificate to the next: everything else in the TBS
 * is in struct issuer, already encoded. */
struct tbs_fields {
	uint8_t serial[SERIAL_LEN];
	struct der_time not_before;
	struct der_time not_after;
	const char *code;
	size_t code_len;
	uint8_t point[P256_POINT_LEN]; /* the subject key, public half only */
	uint8_t key_id[KEY_ID_LEN];
};

/* ---- a DER writer ---- */

/* Fills buf from its end towards its start: a constructed value's contents
 * are written before its tag and length, so every length is measured from
 * what was written, never worked out ahead.  Running out of room sets
 * overflow and writes nothing more. */
struct der {
	uint8_t *buf;
	size_t cap;
	size_t off;             /* the output so far is buf[off, cap) */
	bool overflow;
};

/* NOLINTNEXTLINE(readability-non-const-parameter): written through d */
static void der_init(struct der *d, uint8_t *buf, size_t cap)
{
	*d = (struct der){ .buf = buf, .cap = cap, .off = cap };
}

/* Bytes written so far: where a value ends, for der_wrap(). */
static size_t der_mark(const struct der *d)
{
	return d->cap - d->off;
}

static void der_put(struct der *d, const void *data, size_t len)
{
	if (len == 0)
		return;
	if (d->overflow || len > d->off) {
		d->overflow = true;
		return;
	}
	d->off -= len;
	memcpy(d->buf + d->off, data, len);
}

static void der_put_byte(struct der *d, uint8_t b)
{
	der_put(d, &b, 1);
}

/* Makes everything written since mark the contents of one value: its length
 * and tag go in front.  DER lengths (X.690 10.1, 8.1.3): short form below
 * 128, else 0x80 | n and the length in the n bytes it needs. */
static void der_wrap(struct der *d, uint8_t tag, size_t mark)
{
	size_t len = der_mark(d) - mark;

	if (len < 0x80) {
		der_put_byte(d, (uint8_t)len);
	} else {
		uint8_t n = 0;

		for (; len > 0; len >>= 8, n++)
			der_put_byte(d, (uint8_t)(len & 0xff));
		der_put_byte(d, (uint8_t)(0x80 | n));
	}
	der_put_byte(d, tag);
}

/* Moves the output to the start of the buffer. */
static int der_finish(struct der *d, size_t *ret_len)
{
	if (d->overflow)
		return PS_E_CRYPTO;
	memmove(d->buf, d->buf + d->off, der_mark(d));
	*ret_len = der_mark(d);
	return 0;
}

/* An unsigned big-endian number as a DER INTEGER (X.690 8.3): leading zero
 * bytes dropped, one put back where the top bit would make it negative. */
static void der_put_unsigned(struct der *d, const uint8_t *be, size_t len)
{
	size_t end = der_mark(d);

	while (len > 1 && be[0] == 0) {
		be++;
		len--;
	}
	der_put(d, be, len);
	if (len == 0 || (be[0] & 0x80))
		der_put_byte(d, 0);
	der_wrap(d, DER_INTEGER, end);
}

/* ---- the issuer: what every certificate shares ---- */

static const struct sig_profile *profile_for(const char *algorithm)
{
	for (size_t k = 0; k < sizeof(profiles) / sizeof(profiles[0]); k++)
		if (strncmp(algorithm, profiles[k].algorithm, strlen(profiles[k].algorithm)) == 0)
			return &profiles[k];
	return NULL;
}

static int issuer_set_algorithm(struct issuer *i)
{
	const struct sig_profile *p = profile_for(i->ca->algorithm);

	if (!p || !i->ca->pubkey)
		return PS_E_UNSUPPORTED;
	i->rsa = p->half_len == 0;
	i->sig_nid = p->sig_nid;
	i->sig_len = i->rsa ? (size_t)EVP_PKEY_get_size(i->ca->pubkey) : 2 * p->half_len;
	if (i->sig_len == 0 || i->sig_len > SIG_MAX)
		return PS_E_UNSUPPORTED;
	/* Fetched once: an implicit fetch per digest costs a lock and a lookup. */
	i->md = EVP_MD_fetch(NULL, p->digest, NULL);
	i->sha1 = EVP_MD_fetch(NULL, "SHA1", NULL);
	i->sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
	if (!i->md || !i->sha1 || !i->sha256)
		return PS_E_CRYPTO;
	return 0;
}

/* RSA parameters are NULL, ECDSA parameters absent (RFC 4055, RFC 5758). */
static int algor_set(const struct issuer *i, X509_ALGOR *alg)
{
	return X509_ALGOR_set0(alg, OBJ_nid2obj(i->sig_nid), i->rsa ? V_ASN1_NULL : V_ASN1_UNDEF,
			       NULL) ? 0 : PS_E_CRYPTO;
}

static int issuer_encode_algorithm(struct issuer *i)
{
	X509_ALGOR *alg = X509_ALGOR_new();
	unsigned char *p = i->alg_der;
	int r = PS_E_NOMEM, len;

	if (!alg)
		goto out;
	r = algor_set(i, alg);
	if (r < 0)
		goto out;
	len = i2d_X509_ALGOR(alg, NULL);
	if (len <= 0 || (size_t)len > sizeof(i->alg_der)) {
		r = PS_E_CRYPTO;
		goto out;
	}
	i->alg_der_len = (size_t)i2d_X509_ALGOR(alg, &p);
	r = 0;
out:
	X509_ALGOR_free(alg);
	return r;
}

/* Appends e's DER to b; takes e, which may be NULL (its maker ran out of memory). */
static int blob_add_ext(struct blob *b, X509_EXTENSION *e)
{
	unsigned char *data, *p;
	int len, r = PS_E_NOMEM;

	if (!e)
		goto out;
	len = i2d_X509_EXTENSION(e, NULL);
	r = PS_E_CRYPTO;
	if (len <= 0)
		goto out;
	r = PS_E_NOMEM;
	data = OPENSSL_realloc(b->data, b->len + (size_t)len);
	if (!data)
		goto out;
	b->data = data;
	p = data + b->len;
	r = i2d_X509_EXTENSION(e, &p) == len ? 0 : PS_E_CRYPTO;
	if (r == 0)
		b->len += (size_t)len;
out:
	X509_EXTENSION_free(e);
	return r;
}

/* The CA's own key id if it states one, else RFC 5280 method (1) over its key. */
static int ca_key_id(const struct issuer *i, uint8_t *out, size_t *ret_len)
{
	const ASN1_OCTET_STRING *ski = X509_get0_subject_key_id(i->ca->x509);
	unsigned len = 0;

	if (ski) {
		if (ASN1_STRING_length(ski) <= 0 || ASN1_STRING_length(ski) > EVP_MAX_MD_SIZE)
			return PS_E_UNSUPPORTED;
		*ret_len = (size_t)ASN1_STRING_length(ski);
		memcpy(out, ASN1_STRING_get0_data(ski), *ret_len);
		return 0;
	}
	if (!X509_pubkey_digest(i->ca->x509, i->sha1, out, &len))
		return PS_E_CRYPTO;
	*ret_len = len;
	return 0;
}

static int issuer_make_aki(struct issuer *i)
{
	AUTHORITY_KEYID *akid = AUTHORITY_KEYID_new();
	uint8_t id[EVP_MAX_MD_SIZE];
	size_t id_len = 0;
	int r = PS_E_NOMEM;

	if (!akid)
		goto out;
	r = ca_key_id(i, id, &id_len);
	if (r < 0)
		goto out;
	r = PS_E_NOMEM;
	akid->keyid = ASN1_OCTET_STRING_new();
	if (!akid->keyid || !ASN1_OCTET_STRING_set(akid->keyid, id, (int)id_len))
		goto out;
	r = blob_add_ext(&i->aki, X509V3_EXT_i2d(NID_authority_key_identifier, 0, akid));
out:
	AUTHORITY_KEYID_free(akid);
	return r;
}

/* The extensions that never change, encoded by OpenSSL once. */
static int issuer_make_extensions(struct issuer *i)
{
	BASIC_CONSTRAINTS *bc = BASIC_CONSTRAINTS_new();
	ASN1_BIT_STRING *ku = ASN1_BIT_STRING_new();
	int r = PS_E_NOMEM;

	if (!bc || !ku)
		goto out;
	bc->ca = 0;
	if (!ASN1_BIT_STRING_set_bit(ku, 0, 1)) /* bit 0: digitalSignature */
		goto out;
	r = blob_add_ext(&i->exts_head, X509V3_EXT_i2d(NID_basic_constraints, 1, bc));
	if (r >= 0)
		r = blob_add_ext(&i->exts_head, X509V3_EXT_i2d(NID_key_usage, 1, ku));
	if (r >= 0)
		r = issuer_make_aki(i);
out:
	BASIC_CONSTRAINTS_free(bc);
	ASN1_BIT_STRING_free(ku);
	return r;
}

static int issuer_copy_name(struct issuer *i)
{
	/* A decoded name keeps the bytes it was decoded from and re-emits them
	 * unchanged: the CA's subject as it is, whatever its string types. */
	unsigned char *der = NULL;
	int len = i2d_X509_NAME(X509_get_subject_name(i->ca->x509), &der);

	if (len <= 0)
		return PS_E_CRYPTO;
	i->name.data = der;
	i->name.len = (size_t)len;
	return 0;
}

/* The group made once: making it costs more than a key, and OpenSSL's P-256
 * code multiplies its generator from a table built into the library. */
static int issuer_make_key_group(struct issuer *i)
{
	i->p256 = EC_GROUP_new_by_curve_name_ex(NULL, NULL, NID_X9_62_prime256v1);
	return i->p256 ? 0 : PS_E_CRYPTO;
}

int issuer_new(const struct ca_cert *ca, unsigned validity_seconds, struct issuer **ret)
{
	struct issuer *i = NULL;
	int r = PS_E_NOMEM;

	if (!ca || !ca->x509)
		return PS_E_UNSUPPORTED;
	i = calloc(1, sizeof(*i));
	if (!i)
		goto out;
	i->ca = ca;
	i->validity = validity_seconds;
	r = issuer_set_algorithm(i);
	if (r >= 0)
		r = issuer_encode_algorithm(i);
	if (r >= 0)
		r = issuer_copy_name(i);
	if (r >= 0)
		r = issuer_make_extensions(i);
	if (r >= 0)
		r = issuer_make_key_group(i);
	if (r < 0)
		goto out;
	*ret = i;
	i = NULL;
out:
	if (r < 0)
		ERR_clear_error();
	issuer_free(i);
	return r;
}

void issuer_free(struct issuer *i)
{
	if (!i)
		return;
	EVP_MD_free(i->md);
	EVP_MD_free(i->sha1);
	EVP_MD_free(i->sha256);
	EC_GROUP_free(i->p256);
	OPENSSL_free(i->name.data);
	OPENSSL_free(i->exts_head.data);
	OPENSSL_free(i->aki.data);
	free(i);
}

/* ---- signing ---- */

/* What sign() receives for data: its hash, and for RSA the DigestInfo
 * around it.  *ret_md_off says where the bare hash starts. */
static int make_sign_input(const struct issuer *i, const uint8_t *data, size_t len, uint8_t *out,
			   size_t *ret_len, size_t *ret_md_off)
{
	size_t off = i->rsa ? sizeof(sha256_digest_info) : 0;
	unsigned md_len = 0;

	if (i->rsa)
		memcpy(out, sha256_digest_info, off);
	if (!EVP_Digest(data, len, out + off, &md_len, i->md, NULL))
		return PS_E_CRYPTO;
	*ret_len = off + md_len;
	*ret_md_off = off;
	return 0;
}

/* r || s (each half of len) as a DER ECDSA-Sig-Value: SEQUENCE { r, s }. */
static int ecdsa_raw_to_der(const uint8_t *raw, size_t len, uint8_t out[SIG_MAX], size_t *ret_len)
{
	struct der d;

	der_init(&d, out, SIG_MAX);
	der_put_unsigned(&d, raw + len / 2, len / 2);
	der_put_unsigned(&d, raw, len / 2);
	der_wrap(&d, DER_SEQUENCE, 0);
	return der_finish(&d, ret_len);
}

/* sign() over in; a positive return is not in its contract and counts as a failure. */
static int call_sign(issue_sign_fn sign, void *sign_ctx, const uint8_t *in, size_t in_len,
		     uint8_t raw[SIG_MAX], size_t *ret_len)
{
	int r = sign(sign_ctx, in, in_len, raw, SIG_MAX, ret_len);

	return r > 0 ? PS_E_INTERNAL : r;
}

/* The raw signature as X.509 carries it: RSA as is, ECDSA as DER. */
static int x509_signature(const struct issuer *i, const uint8_t *raw, size_t raw_len,
			  uint8_t out[SIG_MAX], size_t *ret_len)
{
	if (!i->rsa)
		return ecdsa_raw_to_der(raw, raw_len, out, ret_len);
	memcpy(out, raw, raw_len);
	*ret_len = raw_len;
	return 0;
}

/* Hashes data, has sign() sign it and returns the X.509 signature. */
static int sign_data(const struct issuer *i, const uint8_t *data, size_t len, issue_sign_fn sign,
		     void *sign_ctx, uint8_t out[SIG_MAX], size_t *ret_len)
{
	uint8_t in[sizeof(sha256_digest_info) + EVP_MAX_MD_SIZE];
	uint8_t raw[SIG_MAX];
	size_t in_len = 0, md_off = 0, raw_len = 0;
	int r;

	r = make_sign_input(i, data, len, in, &in_len, &md_off);
	if (r < 0)
		return r;
	r = call_sign(sign, sign_ctx, in, in_len, raw, &raw_len);
	if (r < 0)
		return r;
	if (raw_len != i->sig_len)
		return PS_E_CRYPTO;
	return x509_signature(i, raw, raw_len, out, ret_len);
}

/* ---- what each certificate has of its own ---- */

static int make_serial(uint8_t serial[SERIAL_LEN])
{
	if (RAND_bytes(serial, SERIAL_LEN) != 1)
		return PS_E_CRYPTO;
	/* Clear the sign bit (positive) and set the next one, so the DER
	 * INTEGER is always exactly 16 bytes: no leading zero to strip or add. */
	serial[0] = (uint8_t)((serial[0] & 0x7f) | 0x40);
	return 0;
}

/* n (not negative) as exactly width decimal digits. */
static char *put_digits(char *p, int n, int width)
{
	for (int k = width - 1; k >= 0; k--, n /= 10)
		p[k] = (char)('0' + n % 10);
	return p + width;
}

/* RFC 5280 4.1.2.5: UTCTime for 1950 to 2049, GeneralizedTime otherwise,
 * both in UTC, with seconds and a Z (the choice ASN1_TIME_set() makes).
 * Written by hand: snprintf() costs more than all the rest of the TBS. */
static int format_time(time_t t, struct der_time *out)
{
	struct tm tm;
	char *p = out->text;

	if (!gmtime_r(&t, &tm))
		return PS_E_CRYPTO;
	if (tm.tm_year >= 50 && tm.tm_year < 150) {
		out->tag = DER_UTCTIME;
		p = put_digits(p, tm.tm_year % 100, 2);
	} else if (tm.tm_year >= -1900 && tm.tm_year <= 9999 - 1900) {
		out->tag = DER_GENERALIZEDTIME;
		p = put_digits(p, tm.tm_year + 1900, 4);
	} else {
		return PS_E_CRYPTO;
	}
	p = put_digits(p, tm.tm_mon + 1, 2);
	p = put_digits(p, tm.tm_mday, 2);
	p = put_digits(p, tm.tm_hour, 2);
	p = put_digits(p, tm.tm_min, 2);
	p = put_digits(p, tm.tm_sec, 2);
	*p++ = 'Z';
	out->len = (size_t)(p - out->text);
	return 0;
}

/* A fresh P-256 key, as key generation makes one (a random scalar in
 * [1, n-1] times the generator) without an EVP_PKEY around it: only the
 * public point is kept, the scalar is wiped and freed here. */
static int make_subject_point(const struct issuer *i, uint8_t point[P256_POINT_LEN])
{
	BN_CTX *ctx = BN_CTX_secure_new();
	BIGNUM *k = BN_secure_new();
	EC_POINT *pub = EC_POINT_new(i->p256);
	int r = PS_E_NOMEM;

	if (!ctx || !k || !pub)
		goto out;
	r = PS_E_CRYPTO;
	do {
		if (!BN_priv_rand_range_ex(k, EC_GROUP_get0_order(i->p256), 0, ctx))
			goto out;
	} while (BN_is_zero(k));
	if (EC_POINT_mul(i->p256, pub, k, NULL, NULL, ctx) &&
	    EC_POINT_point2oct(i->p256, pub, POINT_CONVERSION_UNCOMPRESSED, point, P256_POINT_LEN,
			       ctx) == P256_POINT_LEN)
		r = 0;
out:
	BN_clear_free(k);
	EC_POINT_free(pub);
	BN_CTX_free(ctx);
	return r;
}

static int make_fields(const struct issuer *i, const char *code, size_t code_len, time_t now,
		       struct tbs_fields *f)
{
	int r;

	f->code = code;
	f->code_len = code_len;
	r = make_serial(f->serial);
	if (r >= 0)
		r = format_time(now - ISSUE_BACKDATE, &f->not_before);
	if (r >= 0)
		r = format_time(now + (time_t)i->validity, &f->not_after);
	if (r >= 0)
		r = make_subject_point(i, f->point);
	if (r >= 0 && !EVP_Digest(f->point, P256_POINT_LEN, f->key_id, NULL, i->sha1, NULL))
		r = PS_E_CRYPTO;
	return r;
}

/* ---- the TBS, written back to front (see struct der) ---- */

static void put_time(struct der *d, const struct der_time *t)
{
	size_t end = der_mark(d);

	der_put(d, t->text, t->len);
	der_wrap(d, t->tag, end);
}

/* Validity ::= SEQUENCE { notBefore, notAfter } */
static void put_validity(struct der *d, const struct tbs_fields *f)
{
	size_t end = der_mark(d);

	put_time(d, &f->not_after);
	put_time(d, &f->not_before);
	der_wrap(d, DER_SEQUENCE, end);
}

/* Name: SEQUENCE { SET { SEQUENCE { id-at-commonName, UTF8String code } } }.
 * UTF8String: the RFC 5280 choice; a code is plain ASCII anyway. */
static void put_subject(struct der *d, const struct tbs_fields *f)
{
	static const uint8_t cn_oid[] = { 0x06, 0x03, 0x55, 0x04, 0x03 }; /* 2.5.4.3 */
	size_t end = der_mark(d);

	der_put(d, f->code, f->code_len);
	der_wrap(d, DER_UTF8STRING, end);
	der_put(d, cn_oid, sizeof(cn_oid));
	der_wrap(d, DER_SEQUENCE, end);
	der_wrap(d, DER_SET, end);
	der_wrap(d, DER_SEQUENCE, end);
}

/* SubjectPublicKeyInfo (RFC 5480): SEQUENCE { SEQUENCE { id-ecPublicKey
 * 1.2.840.10045.2.1, namedCurve prime256v1 1.2.840.10045.3.1.7 },
 * BIT STRING point }. */
static void put_subject_key(struct der *d, const struct tbs_fields *f)
{
	static const uint8_t alg[] = {
		0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01,
		0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07,
	};
	size_t end = der_mark(d);

	der_put(d, f->point, P256_POINT_LEN);
	der_put_byte(d, 0); /* no unused bits */
	der_wrap(d, DER_BIT_STRING, end);
	der_put(d, alg, sizeof(alg));
	der_wrap(d, DER_SEQUENCE, end);
}

/* Extension { id-ce-subjectKeyIdentifier 2.5.29.14, not critical (DEFAULT
 * FALSE: absent), OCTET STRING holding the KeyIdentifier OCTET STRING }. */
static void put_subject_key_id(struct der *d, const struct tbs_fields *f)
{
	static const uint8_t ski_oid[] = { 0x06, 0x03, 0x55, 0x1d, 0x0e };
	size_t end = der_mark(d);

	der_put(d, f->key_id, KEY_ID_LEN);
	der_wrap(d, DER_OCTET_STRING, end);
	der_wrap(d, DER_OCTET_STRING, end);
	der_put(d, ski_oid, sizeof(ski_oid));
	der_wrap(d, DER_SEQUENCE, end);
}

/* [3] EXPLICIT Extensions: basicConstraints, keyUsage, subjectKeyIdentifier,
 * authorityKeyIdentifier, in the order the profile has always had. */
static void put_extensions(struct der *d, const struct issuer *i, const struct tbs_fields *f)
{
	size_t end = der_mark(d);

	der_put(d, i->aki.data, i->aki.len);
	put_subject_key_id(d, f);
	der_put(d, i->exts_head.data, i->exts_head.len);
	der_wrap(d, DER_SEQUENCE, end);
	der_wrap(d, DER_EXPLICIT_3, end);
}

/* TBSCertificate ::= SEQUENCE { [0] EXPLICIT version v3, serialNumber,
 * signature, issuer, validity, subject, subjectPublicKeyInfo, [3] extensions } */
static void put_tbs(struct der *d, const struct issuer *i, const struct tbs_fields *f)
{
	static const uint8_t version[] = { 0xa0, 0x03, 0x02, 0x01, 0x02 }; /* INTEGER 2: v3 */
	size_t end = der_mark(d), serial;

	put_extensions(d, i, f);
	put_subject_key(d, f);
	put_subject(d, f);
	put_validity(d, f);
	der_put(d, i->name.data, i->name.len);
	der_put(d, i->alg_der, i->alg_der_len);
	serial = der_mark(d);
	der_put(d, f->serial, SERIAL_LEN);
	der_wrap(d, DER_INTEGER, serial);
	der_put(d, version, sizeof(version));
	der_wrap(d, DER_SEQUENCE, end);
}

/* The to-be-signed certificate, encoded into *ret_tbs (free() it). */
static int build_tbs(const struct issuer *i, const struct tbs_fields *f, uint8_t **ret_tbs,
		     size_t *ret_len)
{
	size_t cap = i->alg_der_len + i->name.len + i->exts_head.len + i->aki.len + TBS_ROOM;
	uint8_t *buf = malloc(cap);
	struct der d;
	int r;

	if (!buf)
		return PS_E_NOMEM;
	der_init(&d, buf, cap);
	put_tbs(&d, i, f);
	r = der_finish(&d, ret_len);
	if (r < 0) {
		free(buf);
		return r;
	}
	*ret_tbs = buf;
	return 0;
}

/* Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue } */
static int assemble_der(const struct issuer *i, const uint8_t *tbs, size_t tbs_len,
			const uint8_t *sig, size_t sig_len, struct issued *c)
{
	int bits_len = ASN1_object_size(0, (int)sig_len + 1, V_ASN1_BIT_STRING);
	int body_len = (int)(tbs_len + i->alg_der_len) + bits_len;
	int total = ASN1_object_size(1, body_len, V_ASN1_SEQUENCE);
	unsigned char *p;

	if (bits_len <= 0 || total <= 0)
		return PS_E_CRYPTO;
	c->der = malloc((size_t)total);
	if (!c->der)
		return PS_E_NOMEM;
	p = c->der;
	ASN1_put_object(&p, 1, body_len, V_ASN1_SEQUENCE, V_ASN1_UNIVERSAL);
	memcpy(p, tbs, tbs_len);
	p += tbs_len;
	memcpy(p, i->alg_der, i->alg_der_len);
	p += i->alg_der_len;
	ASN1_put_object(&p, 0, (int)sig_len + 1, V_ASN1_BIT_STRING, V_ASN1_UNIVERSAL);
	*p++ = 0; /* no unused bits */
	memcpy(p, sig, sig_len);
	c->der_len = (size_t)total;
	return 0;
}

/* PEM straight from the DER: the same text PEM_write_X509() makes, without
 * decoding the certificate we have just encoded. */
static int pem_encode(struct issued *c)
{
	static const char head[] = "-----BEGIN CERTIFICATE-----\n";
	static const char tail[] = "-----END CERTIFICATE-----\n";
	size_t lines = (c->der_len + 47) / 48;
	char *p;

	c->pem = malloc(sizeof(head) - 1 + lines * 65 + sizeof(tail));
	if (!c->pem)
		return PS_E_NOMEM;
	p = c->pem;
	memcpy(p, head, sizeof(head) - 1);
	p += sizeof(head) - 1;
	for (size_t off = 0; off < c->der_len; off += 48) {
		size_t n = c->der_len - off < 48 ? c->der_len - off : 48;

		/* 64 characters and a NUL, which the newline replaces. */
		p += EVP_EncodeBlock((unsigned char *)p, c->der + off, (int)n);
		*p++ = '\n';
	}
	memcpy(p, tail, sizeof(tail));
	return 0;
}

static int finish_issued(const struct issuer *i, const uint8_t serial[SERIAL_LEN], time_t now,
			 struct issued *c)
{
	uint8_t md[EVP_MAX_MD_SIZE];
	unsigned md_len = 0;

	if (!EVP_Digest(c->der, c->der_len, md, &md_len, i->sha256, NULL))
		return PS_E_CRYPTO;
	hex_encode(md, md_len, false, c->sha256_fingerprint);
	hex_encode(serial, SERIAL_LEN, false, c->serial_hex);
	c->not_before = now - ISSUE_BACKDATE;
	c->not_after = now + (time_t)i->validity;
	return pem_encode(c);
}

int issue_certificate(const struct issuer *i, const char *code, issue_sign_fn sign,
		      void *sign_ctx, struct issued **ret)
{
	struct tbs_fields f;
	uint8_t sig[SIG_MAX];
	uint8_t *tbs = NULL;
	size_t tbs_len = 0, sig_len = 0;
	struct issued *c = NULL;
	size_t code_len = code ? strnlen(code, CODE_MAX_LEN + 1) : 0;
	time_t now = time(NULL);
	int r;

	r = code_validate(code, code_len);
	if (r < 0)
		return r;
	/* code_validate() refuses NULL already; said again for the analyzer. */
	if (!i || !sign || !code)
		return PS_E_INTERNAL;
	r = make_fields(i, code, code_len, now, &f);
	if (r >= 0)
		r = build_tbs(i, &f, &tbs, &tbs_len);
	if (r >= 0)
		r = sign_data(i, tbs, tbs_len, sign, sign_ctx, sig, &sig_len);
	if (r < 0)
		goto out;
	c = calloc(1, sizeof(*c));
	r = c ? assemble_der(i, tbs, tbs_len, sig, sig_len, c) : PS_E_NOMEM;
	if (r >= 0)
		r = finish_issued(i, f.serial, now, c);
	if (r < 0)
		goto out;
	*ret = c;
	c = NULL;
out:
	if (r < 0)
		ERR_clear_error();
	free(tbs);
	issued_free(c);
	return r;
}

void issued_free(struct issued *c)
{
	if (!c)
		return;
	free(c->der);
	free(c->pem);
	free(c);
}

static int verify_with_ca(const struct issuer *i, const uint8_t *sig, size_t sig_len,
			  const uint8_t *md, size_t md_len)
{
	EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_pkey(NULL, i->ca->pubkey, NULL);
	int r = PS_E_CRYPTO;

	if (!ctx || EVP_PKEY_verify_init(ctx) <= 0)
		goto out;
	if (i->rsa && (EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PADDING) <= 0 ||
		       EVP_PKEY_CTX_set_signature_md(ctx, i->md) <= 0))
		goto out;
	r = EVP_PKEY_verify(ctx, sig, sig_len, md, md_len) == 1 ? 0 : PS_E_KEY_MISMATCH;
out:
	EVP_PKEY_CTX_free(ctx);
	return r;
}

int issuer_check_key(const struct issuer *i, issue_sign_fn sign, void *sign_ctx)
{
	uint8_t data[32], in[sizeof(sha256_digest_info) + EVP_MAX_MD_SIZE];
	uint8_t raw[SIG_MAX], sig[SIG_MAX];
	size_t in_len = 0, md_off = 0, raw_len = 0, sig_len = 0;
	int r;

	if (!i || !sign)
		return PS_E_INTERNAL;
	if (RAND_bytes(data, sizeof(data)) != 1)
		return PS_E_CRYPTO;
	r = make_sign_input(i, data, sizeof(data), in, &in_len, &md_off);
	if (r >= 0)
		r = call_sign(sign, sign_ctx, in, in_len, raw, &raw_len);
	if (r < 0)
		goto out;
	/* A signature of another size comes from another key. */
	r = raw_len == i->sig_len ? x509_signature(i, raw, raw_len, sig, &sig_len) :
				    PS_E_KEY_MISMATCH;
	if (r >= 0)
		r = verify_with_ca(i, sig, sig_len, in + md_off, in_len - md_off);
out:
	ERR_clear_error();
	return r;
}
