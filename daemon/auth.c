#include "auth.h"

#include <stdint.h>
#include <string.h>
#include <strings.h>

#include <openssl/evp.h>

#include "error.h"
#include "text.h"

_Static_assert(sizeof(((struct config_client *)0)->token_sha256) == 32,
	       "token_sha256 holds a SHA-256 digest");

static bool is_blank(char c)
{
	return c == ' ' || c == '\t';
}

/* RFC 6750 b64token: 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"=" */
static bool is_token_char(char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
	       c == '-' || c == '.' || c == '_' || c == '~' || c == '+' || c == '/';
}

/* Finds the token in "Bearer <token>": the scheme in any case, then blanks,
 * the token, and optional trailing blanks (not part of a field value). */
static int bearer_token(const char *header, const char **ret, size_t *ret_len)
{
	const char *t;
	size_t len = 0, end;

	if (!header || strncasecmp(header, "Bearer", 6) != 0 || !is_blank(header[6]))
		return PS_E_UNAUTHORIZED;
	for (t = header + 6; is_blank(*t); t++)
		;
	/* Bounded: a megabyte of header costs no more than AUTH_TOKEN_MAX. */
	while (len <= AUTH_TOKEN_MAX && is_token_char(t[len]))
		len++;
	if (len == 0)
		return PS_E_UNAUTHORIZED;
	while (len <= AUTH_TOKEN_MAX && t[len] == '=')
		len++;
	for (end = len; end <= AUTH_TOKEN_MAX && is_blank(t[end]); end++)
		;
	if (len > AUTH_TOKEN_MAX || end > AUTH_TOKEN_MAX || t[end] != '\0')
		return PS_E_UNAUTHORIZED;
	*ret = t;
	*ret_len = len;
	return 0;
}

/* Whether the peer has the uid and gid client names (those it names). */
static bool peer_matches(const struct config_client *c, const struct auth_peer *peer)
{
	if (!c->has_uid && !c->has_gid)
		return true;
	if (!peer || !peer->is_unix)
		return false;
	return (!c->has_uid || c->uid == peer->uid) && (!c->has_gid || c->gid == peer->gid);
}

static int authenticate_token(const struct config *cfg, const char *authorization,
			      const struct auth_peer *peer, const struct config_client **ret)
{
	uint8_t digest[32];
	const char *token;
	size_t len, match = SIZE_MAX;

	if (bearer_token(authorization, &token, &len) < 0)
		return PS_E_UNAUTHORIZED;
	if (!EVP_Digest(token, len, digest, NULL, EVP_sha256(), NULL))
		return PS_E_CRYPTO;
	/* Every client is compared and the match picked without a branch, so
	 * the time taken says nothing about which hash (if any) matched. */
	for (size_t i = 0; i < cfg->n_clients; i++) {
		const struct config_client *c = &cfg->clients[i];
		size_t eq = (size_t)(bytes_equal_ct(digest, c->token_sha256, sizeof(digest)) &
				     c->has_token);
		size_t mask = (size_t)0 - eq;

		match = (match & ~mask) | (i & mask);
	}
	if (match == SIZE_MAX || !peer_matches(&cfg->clients[match], peer))
		return PS_E_UNAUTHORIZED;
	*ret = &cfg->clients[match];
	return 0;
}

int auth_authenticate(const struct config *cfg, const char *authorization,
		      const struct auth_peer *peer, const struct config_client **ret)
{
	if (!cfg)
		return PS_E_UNAUTHORIZED;
	if (authorization)
		return authenticate_token(cfg, authorization, peer, ret);
	if (!peer || !peer->is_unix)
		return PS_E_UNAUTHORIZED;
	for (size_t i = 0; i < cfg->n_clients; i++) {
		const struct config_client *c = &cfg->clients[i];

		if (!c->has_token && (c->has_uid || c->has_gid) && peer_matches(c, peer)) {
			*ret = c;
			return 0;
		}
	}
	return PS_E_UNAUTHORIZED;
}

bool auth_may_use_key(const struct config_client *client, const char *key_name)
{
	if (!client || !key_name)
		return false;
	if (client->all_keys)
		return true;
	for (size_t i = 0; i < client->n_keys; i++)
		if (strcmp(client->keys[i], key_name) == 0)
			return true;
	return false;
}
