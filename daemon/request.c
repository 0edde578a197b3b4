#include "request.h"

#include <stdbool.h>
#include <stdio.h>

#include <jansson.h>

#include "code.h"
#include "error.h"
#include "signer.h"

static bool context_valid(const char *s, size_t len)
{
	if (len > SIGNER_CONTEXT_MAX)
		return false;
	for (size_t i = 0; i < len; i++)
		if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] > 0x7e)
			return false;
	return true;
}

/* The first thing wrong with root, as a sentence in why; 0 if nothing. */
static int check_members(json_t *root, char why[REQUEST_WHY_MAX])
{
	json_t *code = json_object_get(root, "verification_code");
	json_t *context = json_object_get(root, "context");

	if (!json_is_object(root))
		snprintf(why, REQUEST_WHY_MAX, "the body must be a JSON object");
	else if (!code)
		snprintf(why, REQUEST_WHY_MAX, "missing member 'verification_code'");
	else if (!json_is_string(code))
		snprintf(why, REQUEST_WHY_MAX, "'verification_code' must be a string");
	else if (context && !json_is_string(context))
		snprintf(why, REQUEST_WHY_MAX, "'context' must be a string");
	else if (json_object_size(root) != 1u + (context ? 1u : 0u))
		snprintf(why, REQUEST_WHY_MAX,
			 "unknown member: only 'verification_code' and 'context' are allowed");
	else if (context && !context_valid(json_string_value(context), json_string_length(context)))
		snprintf(why, REQUEST_WHY_MAX,
			 "'context' must be at most %d printable ASCII characters", SIGNER_CONTEXT_MAX);
	else if (code_validate(json_string_value(code), json_string_length(code)) < 0)
		return PS_E_INVALID_CODE;
	else
		return 0;
	return PS_E_INVALID_REQUEST;
}

int request_parse_sign(const char *body, size_t len, struct sign_request *ret,
		       char why[REQUEST_WHY_MAX])
{
	json_error_t jerr;
	/* JSON_ALLOW_NUL: "\u0000" in a code is a bad code, not bad JSON. */
	json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &jerr);
	json_t *context;
	int r;

	why[0] = '\0';
	if (!root) {
		snprintf(why, REQUEST_WHY_MAX, "the body is not valid JSON: %s", jerr.text);
		return PS_E_INVALID_REQUEST;
	}
	r = check_members(root, why);
	if (r < 0) {
		json_decref(root);
		return r;
	}
	context = json_object_get(root, "context");
	ret->code = json_string_value(json_object_get(root, "verification_code"));
	ret->context = context ? json_string_value(context) : NULL;
	ret->json = root;
	return 0;
}

void request_sign_free(struct sign_request *r)
{
	json_decref(r->json);
	r->json = NULL;
	r->code = NULL;
	r->context = NULL;
}
