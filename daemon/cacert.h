/* A CA certificate and what the API shows about it.  Public data only. */
#ifndef POPSIGN_CACERT_H
#define POPSIGN_CACERT_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

struct ca_cert {
	X509 *x509;
	EVP_PKEY *pubkey;           /* owned by x509's accessors: do not free */
	char algorithm[16];         /* "EC-P256", "EC-P384", "EC-P521", "RSA-2048", ... */
	char *subject;              /* RFC 2253 text, e.g. "CN=Dev Root" */
	char sha1_thumbprint[41];   /* uppercase hex, as Azure shows it */
	char sha256_fingerprint[65];/* lowercase hex */
	time_t not_before;
	time_t not_after;
	char *pem;
	uint8_t *der;
	size_t der_len;
};

/* Reads one PEM (or DER) certificate from path.  Returns 0 and *ret (free
 * with ca_cert_free()), or PS_E_NOT_FOUND, PS_E_IO, PS_E_INVALID_REQUEST (not
 * a certificate), PS_E_UNSUPPORTED (key neither RSA 2048-4096 nor EC
 * P-256/384/521). */
int ca_cert_load_file(const char *path, struct ca_cert **ret);

/* The same from DER bytes. */
int ca_cert_from_der(const uint8_t *der, size_t len, struct ca_cert **ret);

/* Frees c.  Accepts NULL. */
void ca_cert_free(struct ca_cert *c);

#endif
