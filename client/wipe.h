/* Freeing that wipes first.  The client holds bearer tokens, client secrets
 * and access tokens; libcurl and jansson copy them into buffers of their
 * own.  Both are set up to allocate with malloc() and free through these, so
 * no copy outlives its use in freed heap memory. */
#ifndef POPSIGN_WIPE_H
#define POPSIGN_WIPE_H

#include <stddef.h>

/* Wipes the whole usable size of the malloc() block p, then frees it.
 * Accepts NULL. */
void wipe_free(void *p);

/* realloc() that never leaves the old block behind unwiped: a new block,
 * the contents copied, the old one wiped and freed.  size 0 frees p and
 * returns NULL.  On failure returns NULL and p is untouched. */
void *wipe_realloc(void *p, size_t size);

/* Makes jansson allocate with malloc() and free with wipe_free().  Call
 * once at start, before any JSON is parsed or built. */
void wipe_setup_json(void);

#endif
