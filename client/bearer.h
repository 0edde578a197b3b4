/* The client's bearer token for popsignd: where its file lives, making a new
 * one, and the hash that goes into popsignd's config. */
#ifndef POPSIGN_BEARER_H
#define POPSIGN_BEARER_H

#include <stdbool.h>
#include <stddef.h>

#define BEARER_TOKEN_BYTES 32                    /* random bytes in a new token */
#define BEARER_TOKEN_HEX_LEN (2 * BEARER_TOKEN_BYTES)
#define BEARER_SHA256_HEX_LEN 64
#define BEARER_TOKEN_MAX 512                     /* longest token popsignd looks at */
#define BEARER_ENV_FILE "POPSIGN_TOKEN_FILE"

/* The token file to use: option if not NULL, else $POPSIGN_TOKEN_FILE if set
 * and not empty, else the default of bearer_default_path().  Sets
 * *ret_is_default when the default was taken.  Returns 0 and *ret (free()),
 * or what bearer_default_path() returns. */
int bearer_resolve_path(const char *option, char **ret, bool *ret_is_default);

/* $XDG_CONFIG_HOME/popsign/token when XDG_CONFIG_HOME is an absolute path,
 * else HOME/.config/popsign/token with HOME from the environment or the
 * password database.  Returns 0 and *ret (free()), PS_E_NOT_FOUND when no
 * home directory is known, or PS_E_NOMEM. */
int bearer_default_path(char **ret);

/* Creates the missing directories above the file path, each with mode 0700
 * (existing ones are left as they are).  Returns 0, or PS_E_IO with errno
 * set, or PS_E_NOMEM. */
int bearer_make_parent_dirs(const char *path);

/* Fills out with a new token: BEARER_TOKEN_BYTES from the OpenSSL CSPRNG as
 * lowercase hex, NUL-terminated.  Returns 0, or PS_E_CRYPTO (out untouched). */
int bearer_generate(char out[BEARER_TOKEN_HEX_LEN + 1]);

/* The SHA-256 of the len bytes of token, exactly the text sent after
 * "Bearer ", as lowercase hex: what popsignd's token_sha256 holds.  Returns
 * 0, or PS_E_CRYPTO with out untouched. */
int bearer_sha256_hex(const char *token, size_t len, char out[BEARER_SHA256_HEX_LEN + 1]);

/* True if token is an RFC 6750 b64token of at most BEARER_TOKEN_MAX
 * characters: 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"=".
 * popsignd refuses anything else, and nothing else can travel safely in an
 * Authorization header. */
bool bearer_token_valid(const char *token, size_t len);

#endif
