/* libFuzzer target: the client's parsers of access token answers (aad.h).
 * An input is a mode byte, a status byte (fuzz_status()) and the body:
 *   't'  aad_parse_token_answer()   Azure AD's or the metadata endpoint's answer
 *   'c'  aad_parse_cli_output()     what "az account get-access-token" prints
 * Besides crashes, leaks and undefined behaviour it checks that an accepted
 * token is one aad_token_valid() accepts, and that a refusal leaves the
 * document out-parameter alone and says why. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "aad.h"
#include "error.h"
#include "fuzz.h"

/* 2026-11-26: "now" for the CLI's expiry arithmetic. */
#define FUZZ_NOW INT64_C(1795737600)

static FILE *devnull;

static void check_token(const struct aad_token_answer *t, const json_t *doc)
{
	if (!doc || !t->access_token || !aad_token_valid(t->access_token, t->len) ||
	    strlen(t->access_token) != t->len)
		abort();
}

static void token_answer(long status, const char *body, size_t len)
{
	struct aad_token_answer t = {0};
	struct azure_error e;
	json_t *doc = NULL;
	int r;

	memset(&e, 0, sizeof(e));
	r = aad_parse_token_answer("Azure AD", status, body, len, &doc, &t, &e);
	if (r == 0) {
		check_token(&t, doc);
	} else {
		if (doc || e.failure == AZURE_FAILURE_NONE || !e.message[0] ||
		    !memchr(e.message, '\0', sizeof(e.message)) ||
		    !memchr(e.code, '\0', sizeof(e.code)))
			abort();
		azure_error_print(devnull, &e);
	}
	json_decref(doc);
}

static void cli_output(const char *out, size_t len)
{
	struct aad_token_answer t = {0};
	json_t *doc = NULL;
	int r = aad_parse_cli_output(out, len, FUZZ_NOW, &doc, &t);

	if (r == 0)
		check_token(&t, doc);
	else if (r != PS_E_INVALID_REQUEST || doc)
		abort();
	json_decref(doc);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 2)
		return 0;
	if (!devnull && !(devnull = fopen("/dev/null", "w")))
		abort();
	if (data[0] == 't')
		token_answer(fuzz_status(data[1]), (const char *)data + 2, size - 2);
	else if (data[0] == 'c')
		cli_output((const char *)data + 2, size - 2);
	return 0;
}
