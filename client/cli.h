/* What every popsign command shares: usage errors, and the popsignd side of
 * a command (its URL, the bearer token file, an open API handle) with the
 * messages and exit codes of its failures. */
#ifndef POPSIGN_CLI_H
#define POPSIGN_CLI_H

#include "daemon_api.h"
#include "secret.h"

#define CLI_ENV_URL "POPSIGN_URL"

/* An open popsignd session. */
struct cli_session {
	char *token_path;
	struct secret *token;
	struct daemon_api *api;
};

/* Prints "popsign: " and the message, then a pointer to --help, on stderr.
 * Returns PS_EXIT_USAGE. */
int cli_usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* popsignd's URL: option (--url) if not NULL, else $POPSIGN_URL if set and
 * not empty, else DAEMON_API_DEFAULT_URL; checked with
 * daemon_api_url_check().  Returns PS_EXIT_OK and *ret (the string chosen,
 * not a copy), or an exit code after reporting why not. */
int cli_resolve_url(const char *option, const char **ret);

/* Reads the token file (token_file, else as bearer_resolve_path() says) and
 * opens the API at url.  Returns PS_EXIT_OK and *ret (cli_session_close()),
 * or an exit code after reporting why not. */
int cli_session_open(const char *url, const char *token_file, struct cli_session *ret);

void cli_session_close(struct cli_session *s);

/* Reports a failed popsignd call of session s (NULL before one is open)
 * and returns its exit code. */
int cli_daemon_failed(const struct cli_session *s, const struct daemon_error *e);

/* Reports an output failure (r from output_*()) writing what, and returns
 * its exit code. */
int cli_output_failed(int r, const char *what);

#endif
