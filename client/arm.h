/* Azure Resource Manager, the certificate operations of DPS and IoT Hub:
 *
 *   {endpoint}/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Devices/
 *     provisioningServices/{dps} | IotHubs/{hub}
 *       /certificates                              GET     arm_list()
 *       /certificates/{name}                       GET     arm_get()
 *                                                  PUT     arm_put()
 *                                                  DELETE  arm_delete()
 *       /certificates/{name}/generateVerificationCode POST arm_generate_code()
 *       /certificates/{name}/verify                POST    arm_verify()
 *
 * with ?api-version= (default ARM_DPS_API_VERSION or ARM_IOTHUB_API_VERSION)
 * and If-Match set to the bare etag (no quotes), as Azure's own clients
 * send it.  Every request gets a fresh-enough token from aad.h and the retry
 * policy of retry.h.  Answers are parsed as the recordings in
 * ../shared/azure/ show real ones: subjects without "CN=", RFC 1123 dates,
 * "created" in year 0001, "certificate" null or absent, error codes as
 * numbers or strings, in IoT's flat shape or ARM's {"error": {...}}. */
#ifndef POPSIGN_ARM_H
#define POPSIGN_ARM_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "aad.h"
#include "azure_error.h"

#define ARM_DEFAULT_ENDPOINT "https://management.azure.com"
#define ARM_DPS_API_VERSION "2022-12-12"
#define ARM_IOTHUB_API_VERSION "2023-06-30"
#define ARM_ETAG_MAX 256
#define ARM_SEGMENT_MAX 256      /* subscription, group, service name, certificate name */
#define ARM_API_VERSION_MAX 32

enum arm_service {
	ARM_SERVICE_DPS,
	ARM_SERVICE_IOTHUB,
};

/* The DPS instance or IoT hub whose certificates are meant. */
struct arm_target {
	enum arm_service service;
	const char *subscription;
	const char *resource_group;
	const char *name;
	const char *api_version; /* NULL: the service's default */
};

/* A certificate description.  The strings point into doc, or into the
 * document of the list that holds it. */
struct arm_certificate {
	json_t *doc;                 /* owned, or NULL for an item of a list */
	const char *id;              /* NULL if absent */
	const char *name;
	const char *type;            /* NULL if absent */
	const char *etag;            /* checked with arm_etag_valid() */
	const char *subject;         /* the CN alone, as real answers have it */
	const char *thumbprint;      /* 40 hex digits (SHA-1 of the DER) */
	const char *expiry_text;     /* RFC 1123 */
	int64_t expiry;
	bool is_verified;
	const char *verification_code; /* generateVerificationCode only, else NULL */
	const char *certificate;     /* NULL when null or absent */
	const char *created_text;    /* NULL if absent */
	const char *updated_text;    /* NULL if absent */
	bool has_created, has_updated; /* the texts parsed as RFC 1123 */
	int64_t created, updated;
};

struct arm_certificate_list {
	json_t *doc;                 /* {"value": [...]} */
	size_t n;
	struct arm_certificate *items;
};

/* What any ARM answer is, for arm_answer_parse(). */
enum arm_answer_kind {
	ARM_ANSWER_EMPTY,       /* 2xx with no body or "null" (DELETE) */
	ARM_ANSWER_CERTIFICATE, /* a certificate description */
	ARM_ANSWER_LIST,        /* {"value": [certificate descriptions]} */
	ARM_ANSWER_RESOURCE,    /* some other JSON object (not a certificate) */
	ARM_ANSWER_ERROR,       /* an error status, described in error */
};

struct arm_answer {
	enum arm_answer_kind kind;
	struct arm_certificate *certificate;
	struct arm_certificate_list *list;
	struct azure_error error;
};

struct arm;

const char *arm_service_name(enum arm_service s);      /* "DPS", "IoT Hub" */
const char *arm_service_command(enum arm_service s);   /* "dps", "iothub" */
const char *arm_default_api_version(enum arm_service s);

/* Checks an ARM endpoint URL as azure_url_check() does (https://, or
 * http:// to a loopback host) and names the token resource that goes with
 * it: AAD_ARM_RESOURCE for the public cloud and for loopback test doubles,
 * else the endpoint's own origin (sovereign clouds name their resource after
 * their endpoint).  Returns 0, *ret_origin and *ret_resource (free() both),
 * PS_E_INVALID_REQUEST with *why, or PS_E_NOMEM. */
int arm_endpoint_resolve(const char *url, char **ret_origin, char **ret_resource,
			 const char **why);

/* Checks what goes into a path: t's subscription, resource group, name
 * and api-version (each 1 to ARM_SEGMENT_MAX characters, no control
 * characters, no "/", not "." or ".."; api-version 1 to
 * ARM_API_VERSION_MAX of [A-Za-z0-9.-]) and, unless NULL, the certificate
 * name (IoT Hub's pattern [A-Za-z0-9-._]{1,64}; DPS the same characters, up
 * to 256).  Returns 0, or PS_E_INVALID_REQUEST with *why naming the option
 * at fault. */
int arm_target_check(const struct arm_target *t, const char *cert, const char **why);

/* The certificate's ARM resource id (cert not NULL) or the collection's
 * path, each segment percent-encoded.  Returns 0 and *ret (free()), or
 * PS_E_NOMEM. */
int arm_certificate_path(const struct arm_target *t, const char *cert, char **ret);

/* True for an etag that may be sent back in If-Match: 1 to ARM_ETAG_MAX
 * printable ASCII characters, no spaces. */
bool arm_etag_valid(const char *etag);

/* Fills *ret from a certificate description (borrowed: ret->doc is left
 * NULL, the strings point into resource).  Requires name, etag,
 * properties.subject, .thumbprint, .expiry (RFC 1123) and .isVerified; takes
 * id, type, verificationCode, certificate (a string or null), created and
 * updated when present.  Returns 0 or PS_E_INVALID_REQUEST. */
int arm_certificate_parse(json_t *resource, struct arm_certificate *ret);

/* Parses a body holding one certificate description.  Returns 0 and *ret
 * (arm_certificate_free()), PS_E_INVALID_REQUEST or PS_E_NOMEM. */
int arm_certificate_from_body(const char *body, size_t len, struct arm_certificate **ret);

/* Parses {"value": [...]} of certificate descriptions (nextLink, if ever
 * present, is ignored).  Returns 0 and *ret (arm_certificate_list_free()),
 * PS_E_INVALID_REQUEST or PS_E_NOMEM. */
int arm_certificate_list_from_body(const char *body, size_t len,
				   struct arm_certificate_list **ret);

void arm_certificate_free(struct arm_certificate *c);
void arm_certificate_list_free(struct arm_certificate_list *l);

/* Fills *err from an error answer: the failure kind by status (401, 403:
 * AZURE_FAILURE_UNAUTHENTICATED; 408, 429, 5xx: AZURE_FAILURE_UNREACHABLE;
 * other 4xx: AZURE_FAILURE_REFUSED; anything else AZURE_FAILURE_MALFORMED),
 * the status, and Azure's code (a number or a string) and message verbatim
 * from {"code", "message", ...} or {"error": {"code", "message"}}.  Returns
 * 0, or PS_E_INVALID_REQUEST for a body of neither shape, after filling
 * *err with the status and the start of the body. */
int arm_error_from_answer(long status, const char *body, size_t len, struct azure_error *err);

/* True if err is the 404 of a certificate that is not there (the resource
 * provider's own answer: a numeric code or none), not ARM's for a missing
 * DPS, hub, group or subscription (string codes such as ResourceNotFound). */
bool arm_error_certificate_missing(const struct azure_error *err);

/* Parses any answer, whatever the request was.  Returns 0 and fills *ret
 * (arm_answer_clear()); PS_E_INVALID_REQUEST for a 2xx body that is not a
 * JSON object, or one that claims to be a certificate description or list
 * and is not.  An error status is never a failure here: ret->error holds
 * what arm_error_from_answer() made of it. */
int arm_answer_parse(long status, const char *body, size_t len, struct arm_answer *ret);
void arm_answer_clear(struct arm_answer *a);

/* A client for the endpoint origin (from arm_endpoint_resolve()) taking
 * tokens from aad (borrowed; it must outlive the client).  Returns 0 and
 * *ret (arm_free()), or PS_E_NOMEM with *err filled. */
int arm_new(const char *origin, struct aad *aad, struct arm **ret, struct azure_error *err);
void arm_free(struct arm *arm);

/* The operations.  Each returns 0 and its result, or a PS_E_* value with
 * *err filled (the answer's status in err->status: 404 and 412 are for the
 * caller to act on).  The certificate goes up as base64 of the PEM bytes;
 * the verification certificate as base64 of the PEM to DPS and as the PEM
 * text to IoT Hub, the forms each service was seen to accept. */
int arm_get(struct arm *arm, const struct arm_target *t, const char *cert,
	    struct arm_certificate **ret, struct azure_error *err);
int arm_list(struct arm *arm, const struct arm_target *t, struct arm_certificate_list **ret,
	     struct azure_error *err);
int arm_put(struct arm *arm, const struct arm_target *t, const char *cert, const char *pem,
	    struct arm_certificate **ret, struct azure_error *err);
int arm_generate_code(struct arm *arm, const struct arm_target *t, const char *cert,
		      const char *etag, struct arm_certificate **ret, struct azure_error *err);
int arm_verify(struct arm *arm, const struct arm_target *t, const char *cert, const char *etag,
	       const char *pem, struct arm_certificate **ret, struct azure_error *err);
int arm_delete(struct arm *arm, const struct arm_target *t, const char *cert, const char *etag,
	       struct azure_error *err);

#endif
