/* The one error vocabulary of popsign.
 *
 * Functions return 0 or one of the negative PS_E_* values below.  Each value
 * carries the HTTP status and the stable API code a caller of popsignd sees,
 * so errors cross module boundaries as values, never as strings to parse.
 */
#ifndef POPSIGN_ERROR_H
#define POPSIGN_ERROR_H

/* X(name, value, http status, api code, message) */
#define PS_ERROR_TABLE(X)                                                                  \
	X(PS_OK, 0, 200, "ok", "success")                                                      \
	X(PS_E_INVALID_REQUEST, -1, 400, "invalid_request", "the request is malformed")        \
	X(PS_E_INVALID_CODE, -2, 400, "invalid_verification_code",                             \
	  "a verification code is 1 to 64 characters of A-Z, a-z and 0-9")                    \
	X(PS_E_UNAUTHORIZED, -3, 401, "unauthorized", "a valid bearer token is required")      \
	X(PS_E_FORBIDDEN, -4, 403, "forbidden", "this caller may not use that key")            \
	X(PS_E_NOT_FOUND, -5, 404, "not_found", "no such resource")                            \
	X(PS_E_METHOD, -6, 405, "method_not_allowed", "method not allowed on this resource")   \
	X(PS_E_TOO_LARGE, -7, 413, "payload_too_large", "the request body is larger than 4 KiB") \
	X(PS_E_MEDIA_TYPE, -8, 415, "unsupported_media_type",                                  \
	  "the request body must be application/json")                                         \
	X(PS_E_RATE_LIMITED, -9, 429, "rate_limited", "too many requests")                     \
	X(PS_E_TOKEN, -10, 503, "token_unavailable", "the key's token cannot sign right now")  \
	X(PS_E_AUDIT, -11, 503, "audit_unavailable", "the audit trail cannot be written")      \
	X(PS_E_INTERNAL, -12, 500, "internal_error", "internal error")                         \
	X(PS_E_NOMEM, -13, 500, "internal_error", "out of memory")                             \
	X(PS_E_IO, -14, 500, "internal_error", "input/output error")                           \
	X(PS_E_PERMISSIONS, -15, 500, "internal_error",                                        \
	  "file is readable by group or others")                                               \
	X(PS_E_PIN, -16, 503, "token_unavailable", "the token refused the PIN")                \
	X(PS_E_KEY_MISMATCH, -17, 500, "internal_error",                                       \
	  "the certificate does not match the private key")                                    \
	X(PS_E_UNSUPPORTED, -18, 500, "internal_error", "unsupported key or algorithm")        \
	X(PS_E_CRYPTO, -19, 500, "internal_error", "cryptographic operation failed")           \
	X(PS_E_CONFIG, -20, 500, "internal_error", "invalid configuration")                    \
	X(PS_E_TIMEOUT, -21, 503, "token_unavailable", "timed out")

enum ps_error {
#define PS_ERROR_ENUM(name, value, status, code, message) name = (value),
	PS_ERROR_TABLE(PS_ERROR_ENUM)
#undef PS_ERROR_ENUM
};

/* A human-readable sentence for err; unknown values map to "internal error". */
const char *ps_strerror(int err);

/* The HTTP status that err answers with (200 for PS_OK, 500 for unknown values). */
int ps_error_http_status(int err);

/* The stable API error code string ("invalid_request", ...) for err. */
const char *ps_error_code(int err);

#endif
