/* Who is calling, and may they use key K. */
#ifndef POPSIGN_AUTH_H
#define POPSIGN_AUTH_H

#include <stdbool.h>
#include <sys/types.h>

#include "config.h"

#define AUTH_TOKEN_MAX 512 /* longest bearer token looked at */

/* Who is at the other end of the connection.  Unix-socket peers are known
 * by SO_PEERCRED; TCP peers only by the bearer token they present. */
struct auth_peer {
	bool is_unix;
	uid_t uid;
	gid_t gid;
};

/* Finds the calling client.  With an Authorization header: the client whose
 * token_sha256 is the SHA-256 of the bearer token (every client compared in
 * constant time), and whose uid and gid, if it names them, are the peer's.
 * Without one: on a Unix socket, the first client without token_sha256 whose
 * uid and gid (those it names) are the peer's.  Returns 0 and *ret (owned by
 * cfg), PS_E_UNAUTHORIZED, or PS_E_CRYPTO if hashing failed. */
int auth_authenticate(const struct config *cfg, const char *authorization,
		      const struct auth_peer *peer, const struct config_client **ret);

/* Whether client may use the key called key_name. */
bool auth_may_use_key(const struct config_client *client, const char *key_name);

#endif
