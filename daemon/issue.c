#include "issue.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/asn1.h>
#include <openssl/core_names.h>
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

/* Everything here is written once by issuer_new() and only read afterwards,
 * which is what makes issue_certificate() safe from several threads: OpenSSL
 * copies the name and the extensions out by re-encoding them, and neither
 * carries state that encoding changes once encoded. */
struct issuer {
	const struct ca_cert *ca;
	unsigned validity;
	bool rsa;
	int sig_nid;
	size_t sig_len;         /* raw signature: RSA modulus bytes, or |r| + |s| */
	EVP_MD *md;             /* the signature's hash */
	EVP_MD *sha1;           /* subject key identifiers */
	EVP_MD *sha256;         /* fingerprints */
	X509_NAME *name;        /* the CA subject, its encoding kept byte for byte */
	EVP_PKEY *p256;         /* P-256 domain parameters: subject keys are made from them */
	X509_EXTENSION *basic_constraints;
	X509_EXTENSION *key_usage;
	X509_EXTENSION *authority_key_id;
	uint8_t alg_der[32];    /* the Certificate's signatureAlgorithm, DER */
	size_t alg_der_len;
};

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
	i->authority_key_id = X509V3_EXT_i2d(NID_authority_key_identifier, 0, akid);
	if (!i->authority_key_id)
		goto out;
	r = 0;
out:
	AUTHORITY_KEYID_free(akid);
	return r;
}

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
	i->basic_constraints = X509V3_EXT_i2d(NID_basic_constraints, 1, bc);
	i->key_usage = X509V3_EXT_i2d(NID_key_usage, 1, ku);
	if (!i->basic_constraints || !i->key_usage)
		goto out;
	r = issuer_make_aki(i);
out:
	BASIC_CONSTRAINTS_free(bc);
	ASN1_BIT_STRING_free(ku);
	return r;
}

static int issuer_copy_name(struct issuer *i)
{
	/* A decoded name keeps its original bytes and re-emits them unchanged;
	 * the copy is ours alone, so nothing can mark it modified later. */
	i->name = X509_NAME_dup(X509_get_subject_name(i->ca->x509));
	if (!i->name)
		return PS_E_NOMEM;
	return i2d_X509_NAME(i->name, NULL) > 0 ? 0 : PS_E_CRYPTO;
}

/* Domain parameters made once: EVP_EC_gen() builds the group anew for
 * every key, which costs more than the key itself. */
static int issuer_make_key_params(struct issuer *i)
{
	EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
	int ok = ctx && EVP_PKEY_paramgen_init(ctx) > 0 &&
		 EVP_PKEY_CTX_set_group_name(ctx, "P-256") > 0 &&
		 EVP_PKEY_paramgen(ctx, &i->p256) > 0;

	EVP_PKEY_CTX_free(ctx);
	return ok ? 0 : PS_E_CRYPTO;
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
		r = issuer_make_key_params(i);
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
	X509_NAME_free(i->name);
	EVP_PKEY_free(i->p256);
	X509_EXTENSION_free(i->basic_constraints);
	X509_EXTENSION_free(i->key_usage);
	X509_EXTENSION_free(i->authority_key_id);
	free(i);
}

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

/* r || s (each half_len bytes) as a DER ECDSA-Sig-Value. */
static int ecdsa_raw_to_der(const uint8_t *raw, size_t len, uint8_t *out, size_t cap,
			    size_t *ret_len)
{
	ECDSA_SIG *sig = ECDSA_SIG_new();
	BIGNUM *r = BN_bin2bn(raw, (int)(len / 2), NULL);
	BIGNUM *s = BN_bin2bn(raw + len / 2, (int)(len / 2), NULL);
	unsigned char *p = out;
	int der_len, ret = PS_E_NOMEM;

	if (!sig || !r || !s)
		goto out;
	ECDSA_SIG_set0(sig, r, s);
	r = s = NULL;
	der_len = i2d_ECDSA_SIG(sig, NULL);
	if (der_len <= 0 || (size_t)der_len > cap) {
		ret = PS_E_CRYPTO;
		goto out;
	}
	*ret_len = (size_t)i2d_ECDSA_SIG(sig, &p);
	ret = 0;
out:
	BN_free(r);
	BN_free(s);
	ECDSA_SIG_free(sig);
	return ret;
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
		return ecdsa_raw_to_der(raw, raw_len, out, SIG_MAX, ret_len);
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

static int set_serial(X509 *x, uint8_t serial[SERIAL_LEN])
{
	if (RAND_bytes(serial, SERIAL_LEN) != 1)
		return PS_E_CRYPTO;
	/* Clear the sign bit (positive) and set the next one, so the DER
	 * INTEGER is always exactly 16 bytes: no leading zero to strip or add. */
	serial[0] = (uint8_t)((serial[0] & 0x7f) | 0x40);
	return ASN1_STRING_set(X509_get_serialNumber(x), serial, SERIAL_LEN) ? 0 : PS_E_NOMEM;
}

static int set_names_and_validity(const struct issuer *i, X509 *x, const char *code, time_t now)
{
	if (!X509_set_version(x, X509_VERSION_3) || !X509_set_issuer_name(x, i->name))
		return PS_E_NOMEM;
	/* UTF8String: the RFC 5280 choice; a code is plain ASCII anyway. */
	if (!X509_NAME_add_entry_by_NID(X509_get_subject_name(x), NID_commonName, V_ASN1_UTF8STRING,
					(const unsigned char *)code, -1, -1, 0))
		return PS_E_NOMEM;
	if (!ASN1_TIME_set(X509_getm_notBefore(x), now - ISSUE_BACKDATE) ||
	    !ASN1_TIME_set(X509_getm_notAfter(x), now + (time_t)i->validity))
		return PS_E_CRYPTO;
	return 0;
}

/* A fresh P-256 key: only its public point goes into the certificate. */
static int set_subject_key(const struct issuer *i, X509 *x, uint8_t key_id[KEY_ID_LEN])
{
	EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_pkey(NULL, i->p256, NULL);
	EVP_PKEY *key = NULL;
	unsigned char *point = OPENSSL_malloc(P256_POINT_LEN);
	size_t len = 0;
	int ok;

	ok = ctx && EVP_PKEY_keygen_init(ctx) > 0 && EVP_PKEY_keygen(ctx, &key) > 0;
	EVP_PKEY_CTX_free(ctx);
	ok = ok && key && point &&
	     EVP_PKEY_get_octet_string_param(key, OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, point,
					     P256_POINT_LEN, &len) &&
	     len == P256_POINT_LEN;
	/* The private half is destroyed here; nothing ever signs with it.  The
	 * point is set as bytes so the certificate holds no reference to the key. */
	EVP_PKEY_free(key);
	if (ok)
		ok = EVP_Digest(point, len, key_id, NULL, i->sha1, NULL) &&
		     X509_PUBKEY_set0_param(X509_get_X509_PUBKEY(x), OBJ_nid2obj(NID_X9_62_id_ecPublicKey),
					    V_ASN1_OBJECT, OBJ_nid2obj(NID_X9_62_prime256v1), point,
					    (int)len);
	if (!ok) {
		OPENSSL_free(point);
		return PS_E_CRYPTO;
	}
	return 0;
}

static int add_extensions(const struct issuer *i, X509 *x, const uint8_t key_id[KEY_ID_LEN])
{
	ASN1_OCTET_STRING *ski = ASN1_OCTET_STRING_new();
	int r = PS_E_NOMEM;

	if (!ski || !ASN1_OCTET_STRING_set(ski, key_id, KEY_ID_LEN))
		goto out;
	if (!X509_add_ext(x, i->basic_constraints, -1) || !X509_add_ext(x, i->key_usage, -1) ||
	    !X509_add1_ext_i2d(x, NID_subject_key_identifier, ski, 0, X509V3_ADD_APPEND) ||
	    !X509_add_ext(x, i->authority_key_id, -1))
		goto out;
	r = 0;
out:
	ASN1_OCTET_STRING_free(ski);
	return r;
}

/* The to-be-signed certificate, encoded into *ret_tbs (OPENSSL_free it). */
static int build_tbs(const struct issuer *i, const char *code, time_t now,
		     uint8_t serial[SERIAL_LEN], uint8_t **ret_tbs, size_t *ret_len)
{
	uint8_t key_id[KEY_ID_LEN];
	X509 *x = X509_new();
	unsigned char *tbs = NULL;
	int r = PS_E_NOMEM, len;

	if (!x)
		goto out;
	r = set_serial(x, serial);
	if (r >= 0)
		r = set_names_and_validity(i, x, code, now);
	if (r >= 0)
		r = set_subject_key(i, x, key_id);
	if (r >= 0)
		r = add_extensions(i, x, key_id);
	/* OpenSSL 3.0 has no setter for the TBS signature algorithm; the getter
	 * hands out the certificate's own member, so it is set in place. */
	if (r >= 0)
		r = algor_set(i, (X509_ALGOR *)X509_get0_tbs_sigalg(x));
	if (r < 0)
		goto out;
	len = i2d_re_X509_tbs(x, &tbs);
	if (len <= 0) {
		r = PS_E_CRYPTO;
		goto out;
	}
	*ret_tbs = tbs;
	*ret_len = (size_t)len;
out:
	X509_free(x);
	return r;
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
	uint8_t serial[SERIAL_LEN], sig[SIG_MAX];
	uint8_t *tbs = NULL;
	size_t tbs_len = 0, sig_len = 0;
	struct issued *c = NULL;
	time_t now = time(NULL);
	int r;

	r = code_validate(code, code ? strnlen(code, CODE_MAX_LEN + 1) : 0);
	if (r < 0)
		return r;
	if (!i || !sign)
		return PS_E_INTERNAL;
	r = build_tbs(i, code, now, serial, &tbs, &tbs_len);
	if (r >= 0)
		r = sign_data(i, tbs, tbs_len, sign, sign_ctx, sig, &sig_len);
	if (r < 0)
		goto out;
	c = calloc(1, sizeof(*c));
	r = c ? assemble_der(i, tbs, tbs_len, sig, sig_len, c) : PS_E_NOMEM;
	if (r >= 0)
		r = finish_issued(i, serial, now, c);
	if (r < 0)
		goto out;
	*ret = c;
	c = NULL;
out:
	if (r < 0)
		ERR_clear_error();
	OPENSSL_free(tbs);
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
