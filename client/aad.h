/* Credentials for Azure Resource Manager: where the bearer token comes
 * from, getting it, and keeping it fresh.
 *
 * The first source that applies wins:
 *   1. --access-token-file FILE: a bearer token, read like a secret file
 *      (regular, no access for group or others), never refreshed;
 *   2. AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET: Azure AD's
 *      client-credentials flow, POST {authority}/{tenant}/oauth2/v2.0/token
 *      with scope {resource}/.default; authority from AZURE_AUTHORITY_HOST,
 *      default AAD_DEFAULT_AUTHORITY;
 *   3. AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_CERTIFICATE_PATH (a
 *      PEM file with the certificate and its RSA key): the same flow with a
 *      signed client assertion (jwt.h);
 *   4. --managed-identity [CLIENT_ID], only when asked for: the instance
 *      metadata endpoint, GET {host}/metadata/identity/oauth2/token with
 *      "Metadata: true"; host from AZURE_POD_IDENTITY_AUTHORITY_HOST,
 *      default AAD_DEFAULT_IMDS;
 *   5. the Azure CLI, if "az" is on PATH: az account get-access-token
 *      --output json --resource {resource}, run without a shell.
 *
 * Tokens live in locked memory only, never on disk, in argv, in output or
 * in error messages, and are fetched again before they expire (tokens
 * from a file excepted: their lifetime is unknown).  Azure AD's error and
 * error_description are reported verbatim. */
#ifndef POPSIGN_AAD_H
#define POPSIGN_AAD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "azure_error.h"
#include "secret.h"

#define AAD_DEFAULT_AUTHORITY "https://login.microsoftonline.com"
#define AAD_DEFAULT_IMDS "http://169.254.169.254"
#define AAD_ARM_RESOURCE "https://management.azure.com"
#define AAD_IMDS_API_VERSION "2018-02-01"
#define AAD_TOKEN_MAX 16384          /* longest access token accepted */
#define AAD_REFRESH_MARGIN_S 300     /* fetch again this long before expiry ... */
				     /* ... or half-way through shorter lifetimes */
#define AAD_CLI_TIMEOUT_S 60         /* the az process, start to end */
#define AAD_CLI_OUTPUT_MAX (256 * 1024)

enum aad_source {
	AAD_SOURCE_TOKEN_FILE,
	AAD_SOURCE_CLIENT_SECRET,
	AAD_SOURCE_CLIENT_CERTIFICATE,
	AAD_SOURCE_MANAGED_IDENTITY,
	AAD_SOURCE_AZURE_CLI,
};

struct aad_options {
	const char *access_token_file;          /* --access-token-file, or NULL */
	bool managed_identity;                  /* --managed-identity given */
	const char *managed_identity_client_id; /* its CLIENT_ID, or NULL */
	const char *resource;                   /* NULL: AAD_ARM_RESOURCE */
};

struct aad;

/* A token and its lifetime as Azure AD, the metadata endpoint or the Azure
 * CLI describe it; the token points into the parsed answer. */
struct aad_token_answer {
	const char *access_token;
	size_t len;
	int64_t expires_in;     /* seconds from now, may be <= 0 */
};

/* Picks the credential source from o and the environment (nothing is sent
 * or run yet).  Returns 0 and *ret (aad_free()); or fills *err and leaves
 * *ret untouched: AZURE_FAILURE_UNAUTHENTICATED when no source applies,
 * AZURE_FAILURE_INPUT for a variable that is set but unusable (a tenant
 * that is not a tenant id or domain, an authority URL that azure_http.h
 * refuses), AZURE_FAILURE_INTERNAL. */
int aad_new(const struct aad_options *o, struct aad **ret, struct azure_error *err);

void aad_free(struct aad *a);

enum aad_source aad_source(const struct aad *a);

/* Where the token comes from, for the user: "access token file FILE",
 * "client secret of application ID (AZURE_CLIENT_SECRET)", ... Owned by a. */
const char *aad_describe(const struct aad *a);

/* The current token (owned by a, valid until the next call or aad_free()),
 * fetched first if there is none or it is about to expire.  Returns 0 and
 * *ret, or fills *err: AZURE_FAILURE_UNAUTHENTICATED (Azure AD or the
 * metadata endpoint refused, with their error and error_description; the
 * token file is unusable; az failed), AZURE_FAILURE_UNREACHABLE,
 * AZURE_FAILURE_MALFORMED, AZURE_FAILURE_INTERNAL. */
int aad_token(struct aad *a, const struct secret **ret, struct azure_error *err);

/* True if token is 1 to AAD_TOKEN_MAX characters that may travel in an
 * Authorization header as RFC 6750 b64token (a JWT is one). */
bool aad_token_valid(const char *token, size_t len);

/* Reads a token file: a regular file with no access for group or others, at
 * most AAD_TOKEN_MAX bytes plus one trailing "\n" or "\r\n", holding a token
 * aad_token_valid() accepts.  Returns 0 and *ret (locked memory; free with
 * secret_free()), or PS_E_NOT_FOUND, PS_E_PERMISSIONS, PS_E_TOO_LARGE,
 * PS_E_INVALID_REQUEST (empty, not regular, not a token), PS_E_IO,
 * PS_E_NOMEM. */
int aad_read_token_file(const char *path, struct secret **ret);

/* Parses the answer of an Azure AD token endpoint or of the metadata
 * endpoint (who names it in messages): status 200 with a JSON object
 * holding access_token (a string aad_token_valid() accepts) and expires_in
 * (a number, or a string of digits as the metadata endpoint sends it).
 * Returns 0 and *ret, pointing into *ret_doc (json_decref() it).  Otherwise
 * fills *err: an answer with "error" is AZURE_FAILURE_UNAUTHENTICATED with
 * code = error and message = who, ": " and error_description verbatim (or
 * AZURE_FAILURE_UNREACHABLE for 429 and 5xx); any other answer is
 * AZURE_FAILURE_MALFORMED. */
int aad_parse_token_answer(const char *who, long status, const char *body, size_t len,
			   json_t **ret_doc, struct aad_token_answer *ret, struct azure_error *err);

/* Parses the JSON that az account get-access-token --output json prints:
 * accessToken, and expires_on (seconds since the epoch, newer versions) or
 * expiresOn ("YYYY-MM-DD HH:MM:SS[.ffffff]", local time).  now is the
 * current time in seconds since the epoch.  Returns 0 and *ret, pointing
 * into *ret_doc (json_decref() it), or PS_E_INVALID_REQUEST. */
int aad_parse_cli_output(const char *out, size_t len, int64_t now, json_t **ret_doc,
			 struct aad_token_answer *ret);

#endif
