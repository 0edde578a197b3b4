/* Parsing what callers send: the body of a signing request. */
#ifndef POPSIGN_REQUEST_H
#define POPSIGN_REQUEST_H

#include <stddef.h>

#define REQUEST_WHY_MAX 256

/* {"verification_code": "...", "context": "..."}, nothing else. */
struct sign_request {
	const char *code;            /* validated with code_validate() */
	const char *context;         /* NULL, or at most SIGNER_CONTEXT_MAX printable ASCII */
	void *json;                  /* owns the strings above */
};

/* Parses len bytes at body strictly: JSON (UTF-8, no duplicate members, at
 * most jansson's nesting depth), an object with a string verification_code
 * and optionally a string context, no other members.  Returns 0 and fills
 * *ret (release with request_sign_free()), PS_E_INVALID_REQUEST with a
 * sentence in why, or PS_E_INVALID_CODE. */
int request_parse_sign(const char *body, size_t len, struct sign_request *ret,
		       char why[REQUEST_WHY_MAX]);

/* Releases what request_parse_sign() filled in.  Accepts a zeroed struct. */
void request_sign_free(struct sign_request *r);

#endif
