#include "wipe.h"

#include <malloc.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <openssl/crypto.h>

void wipe_free(void *p)
{
	if (!p)
		return;
	OPENSSL_cleanse(p, malloc_usable_size(p));
	free(p);
}

void *wipe_realloc(void *p, size_t size)
{
	size_t old;
	void *q;

	if (!p)
		return malloc(size);
	if (size == 0) {
		wipe_free(p);
		return NULL;
	}
	q = malloc(size);
	if (!q)
		return NULL;
	old = malloc_usable_size(p);
	memcpy(q, p, old < size ? old : size);
	wipe_free(p);
	return q;
}

void wipe_setup_json(void)
{
	json_set_alloc_funcs(malloc, wipe_free);
}
