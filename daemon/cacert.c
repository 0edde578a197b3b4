#include "cacert.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/pem.h>

#include "error.h"
#include "text.h"
#include "util.h"

/* A certificate file larger than this is not a CA certificate we want. */
#define CACERT_MAX_FILE (1024 * 1024)

static int read_file(const char *path, uint8_t **ret_data, size_t *ret_len)
{
	_cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	_cleanup_free_ uint8_t *data = NULL;
	struct stat st;
	size_t len = 0;

	if (fd < 0)
		return errno == ENOENT ? PS_E_NOT_FOUND : PS_E_IO;
	if (fstat(fd, &st) < 0)
		return PS_E_IO;
	if (!S_ISREG(st.st_mode) || st.st_size > CACERT_MAX_FILE)
		return PS_E_INVALID_REQUEST;
	data = malloc((size_t)st.st_size + 1);
	if (!data)
		return PS_E_NOMEM;
	/* Read to EOF but never past the size seen: the file may be growing. */
	while (len < (size_t)st.st_size) {
		ssize_t n = read(fd, data + len, (size_t)st.st_size - len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return PS_E_IO;
		if (n == 0)
			break;
		len += (size_t)n;
	}
	*ret_data = TAKE_PTR(data);
	*ret_len = len;
	return 0;
}

static bool looks_like_pem(const uint8_t *data, size_t len)
{
	return memmem(data, len, "-----BEGIN ", 11) != NULL;
}

/* Parses the first PEM certificate in data and returns it as DER. */
static int pem_to_der(const uint8_t *data, size_t len, uint8_t **ret_der, size_t *ret_len)
{
	BIO *bio = BIO_new_mem_buf(data, (int)len);
	X509 *x = NULL;
	uint8_t *der = NULL;
	int der_len, r = PS_E_NOMEM;

	if (!bio)
		goto out;
	x = PEM_read_bio_X509(bio, NULL, NULL, NULL);
	if (!x) {
		r = PS_E_INVALID_REQUEST;
		goto out;
	}
	der_len = i2d_X509(x, &der);
	if (der_len <= 0) {
		r = PS_E_CRYPTO;
		goto out;
	}
	*ret_der = der;
	*ret_len = (size_t)der_len;
	r = 0;
out:
	X509_free(x);
	BIO_free(bio);
	return r;
}

int ca_cert_load_file(const char *path, struct ca_cert **ret)
{
	_cleanup_free_ uint8_t *data = NULL;
	uint8_t *der = NULL;
	size_t len, der_len;
	int r;

	r = read_file(path, &data, &len);
	if (r < 0)
		return r;
	if (!looks_like_pem(data, len))
		/* NOLINTNEXTLINE(clang-analyzer-unix.Malloc): freed by _cleanup_free_ */
		return ca_cert_from_der(data, len, ret);
	r = pem_to_der(data, len, &der, &der_len);
	if (r < 0) {
		/* The caller logs our error code; stale OpenSSL errors would only mislead. */
		ERR_clear_error();
		return r;
	}
	r = ca_cert_from_der(der, der_len, ret);
	OPENSSL_free(der);
	return r;
}

/* "EC-P256", "RSA-2048", ... or PS_E_UNSUPPORTED. */
static int key_algorithm(EVP_PKEY *key, char out[16])
{
	char group[64];
	int bits = EVP_PKEY_get_bits(key);

	switch (EVP_PKEY_get_base_id(key)) {
	case EVP_PKEY_RSA:
		/* Tokens make whole-byte moduli; anything else is not a key we expect. */
		if (bits < 2048 || bits > 4096 || bits % 8 != 0)
			return PS_E_UNSUPPORTED;
		snprintf(out, 16, "RSA-%d", bits);
		return 0;
	case EVP_PKEY_EC:
		/* Named curves only: explicit parameters have no group name. */
		if (!EVP_PKEY_get_group_name(key, group, sizeof(group), NULL))
			return PS_E_UNSUPPORTED;
		switch (OBJ_txt2nid(group)) {
		case NID_X9_62_prime256v1:
			strcpy(out, "EC-P256");
			return 0;
		case NID_secp384r1:
			strcpy(out, "EC-P384");
			return 0;
		case NID_secp521r1:
			strcpy(out, "EC-P521");
			return 0;
		default:
			return PS_E_UNSUPPORTED;
		}
	default:
		return PS_E_UNSUPPORTED;
	}
}

static int name_rfc2253(const X509_NAME *name, char **ret)
{
	BIO *bio = BIO_new(BIO_s_mem());
	char *text = NULL, *data;
	long len;
	int r = PS_E_NOMEM;

	if (!bio)
		goto out;
	if (X509_NAME_print_ex(bio, name, 0, XN_FLAG_RFC2253) < 0) {
		r = PS_E_CRYPTO;
		goto out;
	}
	len = BIO_get_mem_data(bio, &data);
	text = strndup(len > 0 ? data : "", len > 0 ? (size_t)len : 0);
	if (!text)
		goto out;
	*ret = text;
	r = 0;
out:
	BIO_free(bio);
	return r;
}

static int der_to_pem(X509 *x, char **ret)
{
	BIO *bio = BIO_new(BIO_s_mem());
	char *text = NULL, *data;
	long len;
	int r = PS_E_NOMEM;

	if (!bio)
		goto out;
	if (!PEM_write_bio_X509(bio, x)) {
		r = PS_E_CRYPTO;
		goto out;
	}
	len = BIO_get_mem_data(bio, &data);
	text = len > 0 ? strndup(data, (size_t)len) : NULL;
	if (!text)
		goto out;
	*ret = text;
	r = 0;
out:
	BIO_free(bio);
	return r;
}

static int asn1_time_to_time_t(const ASN1_TIME *t, time_t *ret)
{
	struct tm tm;

	if (!ASN1_TIME_to_tm(t, &tm))
		return PS_E_INVALID_REQUEST;
	*ret = timegm(&tm);
	return 0;
}

static int fill_digests(struct ca_cert *c)
{
	uint8_t md[EVP_MAX_MD_SIZE];
	unsigned md_len;

	if (!EVP_Digest(c->der, c->der_len, md, &md_len, EVP_sha1(), NULL))
		return PS_E_CRYPTO;
	hex_encode(md, md_len, true, c->sha1_thumbprint);
	if (!EVP_Digest(c->der, c->der_len, md, &md_len, EVP_sha256(), NULL))
		return PS_E_CRYPTO;
	hex_encode(md, md_len, false, c->sha256_fingerprint);
	return 0;
}

/* Everything but x509 and der, which the caller has set. */
static int fill_fields(struct ca_cert *c)
{
	int r;

	c->pubkey = X509_get0_pubkey(c->x509);
	if (!c->pubkey)
		return PS_E_UNSUPPORTED;
	r = key_algorithm(c->pubkey, c->algorithm);
	if (r < 0)
		return r;
	r = name_rfc2253(X509_get_subject_name(c->x509), &c->subject);
	if (r < 0)
		return r;
	r = fill_digests(c);
	if (r < 0)
		return r;
	r = asn1_time_to_time_t(X509_get0_notBefore(c->x509), &c->not_before);
	if (r < 0)
		return r;
	r = asn1_time_to_time_t(X509_get0_notAfter(c->x509), &c->not_after);
	if (r < 0)
		return r;
	return der_to_pem(c->x509, &c->pem);
}

int ca_cert_from_der(const uint8_t *der, size_t len, struct ca_cert **ret)
{
	struct ca_cert *c = NULL;
	const unsigned char *p = der;
	int r = PS_E_NOMEM;

	if (!der || len == 0 || len > CACERT_MAX_FILE)
		return PS_E_INVALID_REQUEST;
	c = calloc(1, sizeof(*c));
	if (!c)
		goto out;
	c->x509 = d2i_X509(NULL, &p, (long)len);
	/* Trailing bytes mean this was not one certificate. */
	if (!c->x509 || p != der + len) {
		r = PS_E_INVALID_REQUEST;
		goto out;
	}
	c->der = malloc(len);
	if (!c->der)
		goto out;
	memcpy(c->der, der, len);
	c->der_len = len;
	r = fill_fields(c);
	if (r < 0)
		goto out;
	*ret = TAKE_PTR(c);
out:
	if (r < 0)
		ERR_clear_error();
	ca_cert_free(c);
	return r;
}

void ca_cert_free(struct ca_cert *c)
{
	if (!c)
		return;
	X509_free(c->x509);
	free(c->subject);
	free(c->pem);
	free(c->der);
	free(c);
}
