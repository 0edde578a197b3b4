#include "bearer.h"

#include <errno.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "error.h"
#include "text.h"

int bearer_default_path(char **ret)
{
	const char *xdg = getenv("XDG_CONFIG_HOME"), *home = getenv("HOME");
	struct passwd *pw;
	char *path = NULL;
	int n;

	/* The XDG base directory spec says to ignore relative values. */
	if (xdg && xdg[0] == '/')
		n = asprintf(&path, "%s/popsign/token", xdg);
	else {
		if (!home || home[0] != '/') {
			pw = getpwuid(getuid());
			home = pw ? pw->pw_dir : NULL;
		}
		if (!home || home[0] != '/')
			return PS_E_NOT_FOUND;
		n = asprintf(&path, "%s/.config/popsign/token", home);
	}
	if (n < 0)
		return PS_E_NOMEM;
	*ret = path;
	return 0;
}

int bearer_resolve_path(const char *option, char **ret, bool *ret_is_default)
{
	const char *env = getenv(BEARER_ENV_FILE);
	const char *chosen = option ? option : (env && env[0] ? env : NULL);
	char *path;

	if (!chosen) {
		int r = bearer_default_path(&path);

		if (r < 0)
			return r;
	} else {
		path = strdup(chosen);
		if (!path)
			return PS_E_NOMEM;
	}
	*ret = path;
	if (ret_is_default)
		*ret_is_default = !chosen;
	return 0;
}

int bearer_make_parent_dirs(const char *path)
{
	char *copy = strdup(path), *slash;
	int r = 0;

	if (!copy)
		return PS_E_NOMEM;
	/* Each prefix ending before a '/' in turn, "/a", "/a/b", ... */
	for (slash = strchr(copy + 1, '/'); slash; slash = strchr(slash + 1, '/')) {
		*slash = '\0';
		if (mkdir(copy, 0700) < 0 && errno != EEXIST) {
			r = PS_E_IO;
			break;
		}
		*slash = '/';
	}
	free(copy);
	return r;
}

int bearer_generate(char out[BEARER_TOKEN_HEX_LEN + 1])
{
	unsigned char raw[BEARER_TOKEN_BYTES];

	if (RAND_bytes(raw, sizeof(raw)) != 1)
		return PS_E_CRYPTO;
	hex_encode(raw, sizeof(raw), false, out);
	OPENSSL_cleanse(raw, sizeof(raw));
	return 0;
}

int bearer_sha256_hex(const char *token, size_t len, char out[BEARER_SHA256_HEX_LEN + 1])
{
	unsigned char md[32];
	unsigned int md_len = 0;

	if (EVP_Digest(token, len, md, &md_len, EVP_sha256(), NULL) != 1 || md_len != sizeof(md))
		return PS_E_CRYPTO;
	hex_encode(md, sizeof(md), false, out);
	return 0;
}

static bool is_token_char(char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
	       c == '-' || c == '.' || c == '_' || c == '~' || c == '+' || c == '/';
}

bool bearer_token_valid(const char *token, size_t len)
{
	size_t i = 0;

	if (!token || len > BEARER_TOKEN_MAX)
		return false;
	while (i < len && is_token_char(token[i]))
		i++;
	if (i == 0)
		return false;
	while (i < len && token[i] == '=')
		i++;
	return i == len;
}
