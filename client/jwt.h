/* The signed client assertion of Azure AD's client-credentials flow with a
 * certificate: a JWT (RFC 7519) signed RS256 with the application's RSA key,
 * its header naming the certificate by "x5t", the base64url SHA-1 of its
 * DER, which is how Azure AD finds the certificate registered for the
 * application. */
#ifndef POPSIGN_JWT_H
#define POPSIGN_JWT_H

#include <stdint.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

#define JWT_LIFETIME_S 600     /* exp - iat */
#define JWT_PEM_FILE_MAX (64 * 1024)

/* Reads a PEM file holding an RSA private key (unencrypted: nothing here
 * asks for a passphrase) and its certificate, possibly among others (the
 * one that matches the key is taken).  The file must be a regular file that
 * group and others cannot access.  Returns 0 with *ret_key and *ret_cert
 * (EVP_PKEY_free(), X509_free()), or on failure, with both untouched:
 *   PS_E_NOT_FOUND, PS_E_IO          the file cannot be opened or read
 *   PS_E_PERMISSIONS                 group or others may access it
 *   PS_E_TOO_LARGE                   larger than JWT_PEM_FILE_MAX
 *   PS_E_INVALID_REQUEST             no private key (or an encrypted one), or
 *                                    no certificate matching it
 *   PS_E_UNSUPPORTED                 the key is not RSA (RS256 needs RSA)
 *   PS_E_NOMEM */
int jwt_load_pem(const char *path, EVP_PKEY **ret_key, X509 **ret_cert);

/* The base64url (no padding) of len bytes of data.  Returns 0 and *ret
 * (free()), or PS_E_NOMEM. */
int jwt_base64url(const unsigned char *data, size_t len, char **ret);

/* A compact JWS: header {"alg":"RS256","typ":"JWT","x5t":...}, claims
 * {"aud":audience,"iss":client_id,"sub":client_id,"jti":<random UUID>,
 * "nbf":now,"iat":now,"exp":now+JWT_LIFETIME_S}, signed RSASSA-PKCS1-v1_5
 * with SHA-256 by key.  Returns 0 and *ret (free()), PS_E_CRYPTO, or
 * PS_E_NOMEM. */
int jwt_client_assertion(EVP_PKEY *key, X509 *cert, const char *audience, const char *client_id,
			 int64_t now, char **ret);

#endif
