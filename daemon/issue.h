/* The verification-certificate profile: the only code that knows it.
 *
 * X.509 v3; random positive 128-bit serial; issuer = the CA subject, byte for
 * byte; subject = CN=<code> alone; notBefore = now - 5 min, notAfter = now +
 * validity; basicConstraints critical CA:FALSE, keyUsage critical
 * digitalSignature, subjectKeyIdentifier, authorityKeyIdentifier (the CA's key
 * id); subject key: a fresh EC P-256 key whose private half is destroyed at
 * once.  Signature: RSA PKCS#1 v1.5 with SHA-256, or ECDSA with SHA-256/384/512
 * for P-256/384/521. */
#ifndef POPSIGN_ISSUE_H
#define POPSIGN_ISSUE_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "cacert.h"

#define ISSUE_BACKDATE 300 /* seconds of clock skew allowed for */

/* Signs in (a digest for EC; a DigestInfo for RSA) with the CA's private key,
 * writing the raw signature (r||s for EC) to sig (room for sig_cap bytes)
 * and its length to *siglen.  Returns 0 or a PS_E_* value, passed back. */
typedef int (*issue_sign_fn)(void *ctx, const uint8_t *in, size_t inlen, uint8_t *sig,
			     size_t sig_cap, size_t *siglen);

struct issuer;

struct issued {
	uint8_t *der;
	size_t der_len;
	char *pem;
	char serial_hex[33];          /* lowercase hex, 32 digits */
	char sha256_fingerprint[65];  /* lowercase hex of the DER's SHA-256 */
	time_t not_before;
	time_t not_after;
};

/* Everything about ca that each certificate reuses (issuer name DER,
 * authority key id, signature algorithm).  ca must outlive the issuer.
 * Returns 0 and *ret (free with issuer_free()), or PS_E_UNSUPPORTED,
 * PS_E_NOMEM, PS_E_CRYPTO. */
int issuer_new(const struct ca_cert *ca, unsigned validity_seconds, struct issuer **ret);

/* Frees i.  Accepts NULL. */
void issuer_free(struct issuer *i);

/* Builds, signs (through sign) and encodes the verification certificate for
 * code, which is validated here too (PS_E_INVALID_CODE).  Safe to call from
 * several threads on one issuer.  Returns 0 and *ret (free with
 * issued_free()), or the sign callback's error, PS_E_CRYPTO, PS_E_NOMEM. */
int issue_certificate(const struct issuer *i, const char *code, issue_sign_fn sign,
		      void *sign_ctx, struct issued **ret);

/* Frees c.  Accepts NULL. */
void issued_free(struct issued *c);

/* Checks that sign() makes signatures ca's public key verifies: one test
 * signature over random data.  Returns 0, PS_E_KEY_MISMATCH, or sign()'s
 * error. */
int issuer_check_key(const struct issuer *i, issue_sign_fn sign, void *sign_ctx);

#endif
