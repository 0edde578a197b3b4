/* libFuzzer target: the body of a signing request (request_parse_sign) and
 * verification code validation (code_validate).
 *
 * Besides crashes, leaks and undefined behaviour, it checks the promises of
 * request.h and code.h: only the documented results, a sentence for every
 * refusal, and that whatever is accepted is a valid code and context. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "code.h"
#include "error.h"
#include "fuzz.h"
#include "request.h"
#include "signer.h"

/* code.h's rule, written independently: 1 to CODE_MAX_LEN of [A-Za-z0-9]. */
static int code_ok(const uint8_t *s, size_t len)
{
	if (len == 0 || len > CODE_MAX_LEN)
		return 0;
	for (size_t i = 0; i < len; i++)
		if (!strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789", s[i]) ||
		    s[i] == '\0')
			return 0;
	return 1;
}

static void check_code_validate(const uint8_t *data, size_t size)
{
	int r = code_validate((const char *)data, size);

	if (r != 0 && r != PS_E_INVALID_CODE)
		abort();
	if ((r == 0) != code_ok(data, size))
		abort();
}

static void check_accepted(const struct sign_request *sr)
{
	if (!sr->code || !sr->json || !code_ok((const uint8_t *)sr->code, strlen(sr->code)))
		abort();
	if (!sr->context)
		return;
	if (strlen(sr->context) > SIGNER_CONTEXT_MAX)
		abort();
	for (const char *p = sr->context; *p; p++)
		if ((unsigned char)*p < 0x20 || (unsigned char)*p > 0x7e)
			abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct sign_request sr = {0};
	char why[REQUEST_WHY_MAX];
	int r;

	check_code_validate(data, size);
	/* The daemon hands over at most HTTP_BODY_MAX bytes, not terminated:
	 * libFuzzer's buffer ends exactly at size, so an overread shows. */
	memset(why, 'x', sizeof(why));
	r = request_parse_sign((const char *)data, size, &sr, why);
	if (!memchr(why, '\0', sizeof(why)))
		abort();
	if (r == 0)
		check_accepted(&sr);
	else if ((r == PS_E_INVALID_REQUEST && why[0] == '\0') || /* refused, no reason given */
		 (r != PS_E_INVALID_REQUEST && r != PS_E_INVALID_CODE))
		abort();
	request_sign_free(&sr);
	request_sign_free(&sr);
	return 0;
}
