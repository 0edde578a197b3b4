/* Who is calling, and may they use key K. */
#ifndef POPSIGN_AUTH_H
#define POPSIGN_AUTH_H

#include <stdbool.h>

#include "config.h"

#define AUTH_TOKEN_MAX 512 /* longest bearer token looked at */

/* Finds the client whose token_sha256 is the SHA-256 of the bearer token in
 * the Authorization header value (which may be NULL).  Every client is
 * compared, in constant time, whatever matches.  Returns 0 and *ret (owned by
 * cfg), or PS_E_UNAUTHORIZED. */
int auth_authenticate(const struct config *cfg, const char *authorization,
		      const struct config_client **ret);

/* Whether client may use the key called key_name. */
bool auth_may_use_key(const struct config_client *client, const char *key_name);

#endif
