/* libFuzzer target: PKCS#11 key URIs as the config gives them
 * (key_uri_parse).  Checks uri.h's promises on what is accepted. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "fuzz.h"
#include "uri.h"

static void check_accepted(const struct key_uri *u)
{
	if (!u->module_path || u->id_len > KEY_URI_ID_MAX)
		abort();
	/* A URI naming neither object nor id is refused. */
	if (!u->object_label && u->id_len == 0)
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct key_uri *u = NULL;
	const char *why = NULL;
	char *text = malloc(size + 1);
	int r;

	if (!text)
		return 0;
	memcpy(text, data, size);
	text[size] = '\0';
	r = key_uri_parse(text, &u, &why);
	if (r == 0) {
		if (!u)
			abort();
		check_accepted(u);
	} else if (r != PS_E_CONFIG || u || !why || !*why) {
		abort();
	}
	key_uri_free(u);
	free(text);
	return 0;
}
