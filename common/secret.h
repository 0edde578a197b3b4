/* Secrets (PINs, bearer tokens) read from files and kept in locked memory. */
#ifndef POPSIGN_SECRET_H
#define POPSIGN_SECRET_H

#include <stddef.h>

/* Largest secret file accepted, in bytes. */
#define SECRET_MAX_SIZE 1024

struct secret {
	char *data; /* NUL-terminated, in locked memory */
	size_t len;
	size_t cap; /* bytes allocated at data: all of them are wiped */
};

/* Reads the secret in path: refuses a file that is not a regular file
 * (PS_E_INVALID_REQUEST), one readable or writable by group or others
 * (PS_E_PERMISSIONS), one larger than SECRET_MAX_SIZE (PS_E_TOO_LARGE), or an
 * empty one (PS_E_INVALID_REQUEST).  One trailing "\n" or "\r\n" is trimmed.
 * On success *ret owns the secret; free it with secret_free().  On failure
 * *ret is untouched and errno-style detail is lost: PS_E_IO or PS_E_NOT_FOUND. */
int secret_read_file(const char *path, struct secret **ret);

/* The same for files of up to max bytes instead of SECRET_MAX_SIZE. */
int secret_read_file_max(const char *path, size_t max, struct secret **ret);

/* A copy of the len bytes at data in locked memory, NUL terminated; with
 * data NULL, room for len bytes and a NUL, zeroed, and len 0.  Returns the
 * secret (free with secret_free()) or NULL. */
struct secret *secret_new(const char *data, size_t len);

/* Wipes, unlocks and frees s.  Accepts NULL. */
void secret_free(struct secret *s);

#endif
