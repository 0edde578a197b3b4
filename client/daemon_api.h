/* popsignd's HTTP API v1, from the client's side.
 *
 *   GET  /v1/keys                                    daemon_api_keys()
 *   GET  /v1/keys/{key}                              daemon_api_key_info()
 *   GET  /v1/keys/{key}/certificate                  daemon_api_ca_cert()
 *   POST /v1/keys/{key}/verification-certificates    daemon_api_sign()
 *
 * Every call returns 0 or a PS_E_* value and, on failure, fills the caller's
 * struct daemon_error: what kind of failure it was (which decides the exit
 * code) and a message fit to show (the daemon's own, or what failed here).
 * Answers are checked against what API v1 promises before anything is
 * handed back; an answer that does not fit is DAEMON_FAILURE_MALFORMED. */
#ifndef POPSIGN_DAEMON_API_H
#define POPSIGN_DAEMON_API_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "secret.h"
#include "transport.h"

#define DAEMON_API_DEFAULT_URL "http://127.0.0.1:7717"
#define DAEMON_API_URL_MAX 512
#define DAEMON_API_UNIX_PREFIX "unix:"
#define DAEMON_API_CONNECT_TIMEOUT_S 5L
#define DAEMON_API_TIMEOUT_S 30L
#define DAEMON_API_RESPONSE_MAX (1024 * 1024)
#define DAEMON_KEY_NAME_MAX 64           /* key names: 1-64 of [A-Za-z0-9._-] */
#define DAEMON_CONTEXT_MAX 512           /* daemon_api_sign()'s context, printable ASCII */
#define DAEMON_ERROR_CODE_MAX 64
#define DAEMON_ERROR_MESSAGE_MAX 512

enum daemon_failure {
	DAEMON_FAILURE_NONE = 0,
	DAEMON_FAILURE_INTERNAL,    /* here: out of memory, libcurl could not be set up */
	DAEMON_FAILURE_INPUT,       /* a key name, code or context refused before sending */
	DAEMON_FAILURE_UNREACHABLE, /* no answer: connection refused, timed out, dropped */
	DAEMON_FAILURE_STATUS,      /* the daemon answered with an error status */
	DAEMON_FAILURE_MALFORMED,   /* the answer is not what API v1 promises */
};

struct daemon_error {
	enum daemon_failure failure;
	long status;                           /* HTTP status, 0 without an answer */
	char code[DAEMON_ERROR_CODE_MAX];      /* the daemon's error code, or "" */
	char message[DAEMON_ERROR_MESSAGE_MAX]; /* as sent or made here; may be truncated,
						 * sanitize before display */
};

struct daemon_api;

/* One key as GET /v1/keys and GET /v1/keys/{key} describe it.  The strings
 * belong to doc (the parsed answer) and live as long as it does. */
struct daemon_key_info {
	json_t *doc;
	const char *name;
	const char *algorithm;          /* "EC-P256", "RSA-2048", ... */
	const char *subject;
	const char *sha1_thumbprint;    /* uppercase hex, as Azure shows it */
	const char *sha256_fingerprint;
	const char *not_before;         /* RFC 3339 UTC */
	const char *not_after;
};

/* A verification certificate as POST .../verification-certificates returns
 * it.  The strings belong to doc; certificate is checked to hold exactly one
 * PEM X.509 certificate and verification_code to be the code sent. */
struct daemon_verification {
	json_t *doc;
	const char *key;
	const char *verification_code;
	const char *certificate;        /* PEM */
	const char *serial;             /* hex */
	const char *not_before;
	const char *not_after;
	const char *sha256_fingerprint;
};

/* True if name is 1 to DAEMON_KEY_NAME_MAX characters of [A-Za-z0-9._-],
 * which also makes it safe in a URL path as it is. */
bool daemon_key_name_valid(const char *name);

/* Checks key as every call below does before sending anything: 0, or
 * PS_E_INVALID_REQUEST with *err filled (DAEMON_FAILURE_INPUT). */
int daemon_check_key(const char *key, struct daemon_error *err);

/* Checks the input of daemon_api_sign() the same way: 0, or
 * PS_E_INVALID_REQUEST or PS_E_INVALID_CODE with *err filled
 * (DAEMON_FAILURE_INPUT).  context may be NULL. */
int daemon_check_sign_input(const char *key, const char *code, const char *context,
			    struct daemon_error *err);

/* Checks a popsignd URL and reduces it to "http://HOST[:PORT]".  Only http://
 * with a host and at most "/" as path; no user, password, query or fragment.
 * "unix:/ABSOLUTE/PATH" (a Unix socket) is returned as it is.
 * Returns 0 and *ret (free() it), or PS_E_INVALID_REQUEST with *why set to a
 * static reason and *ret untouched, or PS_E_NOMEM. */
int daemon_api_url_check(const char *url, char **ret, const char **why);

/* A handle for the daemon at url (checked with daemon_api_url_check())
 * sending token, which is borrowed and must outlive the handle; NULL sends
 * no Authorization header.  The token must pass bearer_token_valid().  Returns 0 and *ret (free with daemon_api_free()); on failure
 * fills *err (DAEMON_FAILURE_INPUT for the URL or token, or
 * DAEMON_FAILURE_INTERNAL) and leaves *ret untouched. */
int daemon_api_new(const char *url, const struct secret *token, struct daemon_api **ret,
		   struct daemon_error *err);

/* Frees api.  Accepts NULL. */
void daemon_api_free(struct daemon_api *api);

/* The base URL api talks to ("http://127.0.0.1:7717"), owned by api. */
const char *daemon_api_url(const struct daemon_api *api);

/* One request to path (starting with "/") with an optional Accept header and
 * an optional JSON body (sent as application/json).  Returns 0 once any
 * answer arrived, whatever its status, and fills *ret (free its members with
 * transport_response_clear()).  On failure fills *err and leaves *ret
 * untouched.  The calls below are built on this one. */
int daemon_api_request(struct daemon_api *api, const char *method, const char *path,
		       const char *accept, const char *json_body, struct transport_response *ret,
		       struct daemon_error *err);

/* GET /v1/keys.  On success *ret_doc owns the whole answer, {"keys": [...]},
 * each entry checked like daemon_key_info_parse(); json_decref() it. */
int daemon_api_keys(struct daemon_api *api, json_t **ret_doc, struct daemon_error *err);

/* GET /v1/keys/{key}.  On success *ret owns the key's description (free
 * with daemon_key_info_free()). */
int daemon_api_key_info(struct daemon_api *api, const char *key, struct daemon_key_info **ret,
			struct daemon_error *err);

/* GET /v1/keys/{key}/certificate.  On success *ret_pem owns the CA
 * certificate's PEM text, checked to hold one X.509 certificate (free()). */
int daemon_api_ca_cert(struct daemon_api *api, const char *key, char **ret_pem,
		       struct daemon_error *err);

/* POST /v1/keys/{key}/verification-certificates for code, which is checked
 * with code_validate() first.  context, if not NULL, is sent as "context"
 * (1 to DAEMON_CONTEXT_MAX printable ASCII characters; daemons of API v1
 * without that member refuse it with 400).  On success *ret owns the answer
 * (free with daemon_verification_free()). */
int daemon_api_sign(struct daemon_api *api, const char *key, const char *code,
		    const char *context, struct daemon_verification **ret,
		    struct daemon_error *err);

/* Converts the first PEM certificate in pem to DER.  Returns 0 and *ret
 * (OPENSSL_free() it) and *ret_len, or PS_E_INVALID_REQUEST if pem does not
 * hold exactly one X.509 certificate, or PS_E_NOMEM. */
int daemon_cert_pem_to_der(const char *pem, unsigned char **ret, size_t *ret_len);

/* Accept NULL. */
void daemon_key_info_free(struct daemon_key_info *info);
void daemon_verification_free(struct daemon_verification *v);

/* Points the members of *ret at the strings of entry, a JSON object with
 * every member of struct daemon_key_info as a string (other members are
 * ignored).  ret->doc is left as it is; nothing is referenced.  Returns 0,
 * or PS_E_INVALID_REQUEST if a member is missing or not a string. */
int daemon_key_info_parse(json_t *entry, struct daemon_key_info *ret);

/* Fills *err from an error answer: status, and the code and message of a
 * body {"error": {"code": "...", "message": "..."}}, both strings.  A body
 * not of that shape leaves code empty and says so in message.  Sets failure
 * to DAEMON_FAILURE_STATUS and returns the PS_E_* value of the daemon's code
 * and status (by status alone without a code; PS_E_INTERNAL if unknown). */
int daemon_error_from_answer(long status, const char *body, size_t len,
			      struct daemon_error *err);

/* Fills *err with failure and a printf-formatted message; status 0, no code. */
void daemon_error_set(struct daemon_error *err, enum daemon_failure failure, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

#endif
