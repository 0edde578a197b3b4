#include "cli.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "bearer.h"
#include "error.h"
#include "exit_code.h"
#include "output.h"

int cli_usage_error(const char *fmt, ...)
{
	char line[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	output_errorf("%s", line);
	fputs("Try 'popsign --help'.\n", stderr);
	return PS_EXIT_USAGE;
}

int cli_resolve_url(const char *option, const char **ret)
{
	const char *env = getenv(CLI_ENV_URL), *why = NULL;
	const char *url = option ? option : env && env[0] ? env : DAEMON_API_DEFAULT_URL;
	char *base = NULL;
	int r;

	r = daemon_api_url_check(url, &base, &why);
	free(base);
	if (r == PS_E_INVALID_REQUEST)
		return cli_usage_error("invalid %s: %s", !option && url == env ? "$" CLI_ENV_URL : "--url",
				       why);
	if (r < 0) {
		output_errorf("out of memory");
		return PS_EXIT_INTERNAL;
	}
	*ret = url;
	return PS_EXIT_OK;
}

int cli_daemon_failed(const struct cli_session *s, const struct daemon_error *e)
{
	output_daemon_error(stderr, e);
	if (e->failure == DAEMON_FAILURE_STATUS && e->status == 401 && s && s->token_path)
		output_errorf("the token in %s is not one popsignd knows: compare its "
			      "token_sha256 with popsignd's configuration",
			      s->token_path);
	return exit_code_for_daemon_error(e);
}

int cli_output_failed(int r, const char *what)
{
	if (r == PS_E_NOMEM)
		output_errorf("out of memory");
	else
		output_errorf("cannot write %s: %s", what, strerror(errno));
	return exit_code_for_output_error(r);
}

static int token_failed(int r, const char *path)
{
	struct stat st;

	if (r == PS_E_NOT_FOUND)
		output_errorf("no token file at %s: make one with 'popsign token-new', or "
			      "name one with --token-file or $" BEARER_ENV_FILE,
			      path);
	else if (r == PS_E_PERMISSIONS && stat(path, &st) == 0 && (st.st_mode & 077))
		output_errorf("%s is accessible by group or others, so it is not used: "
			      "run 'chmod 600 %s'",
			      path, path);
	else if (r == PS_E_PERMISSIONS)
		output_errorf("cannot read the token file %s: permission denied", path);
	else if (r == PS_E_TOO_LARGE)
		output_errorf("%s is larger than %d bytes: not a token file", path,
			      SECRET_MAX_SIZE);
	else if (r == PS_E_INVALID_REQUEST)
		output_errorf("%s is not a usable token file: empty, not a regular file, or "
			      "not a bearer token (at most %d of A-Z a-z 0-9 - . _ ~ + /, "
			      "then '=' padding)",
			      path, BEARER_TOKEN_MAX);
	else
		output_errorf("cannot read the token file %s: %s", path, ps_strerror(r));
	return exit_code_for_token_error(r);
}

static bool unix_url(const char *url)
{
	return strncmp(url, DAEMON_API_UNIX_PREFIX, strlen(DAEMON_API_UNIX_PREFIX)) == 0;
}

int cli_session_open(const char *url, const char *token_file, struct cli_session *ret)
{
	struct cli_session s = {0};
	struct daemon_error err = {0};
	bool is_default = false;
	int r;

	r = bearer_resolve_path(token_file, &s.token_path, &is_default);
	if (r < 0 && !unix_url(url)) {
		output_errorf("no home directory for the default token file: use --token-file");
		return exit_code_for_token_error(r);
	}
	if (r < 0)
		is_default = true; /* no home: only a Unix socket can do without a token */
	r = r < 0 ? PS_E_NOT_FOUND : secret_read_file(s.token_path, &s.token);
	/* On a Unix socket popsignd knows the caller by its uid: a token is
	 * only needed if one is named or the default file exists. */
	if (r == PS_E_NOT_FOUND && is_default && unix_url(url))
		r = 0;
	if (r == 0 && s.token && !bearer_token_valid(s.token->data, s.token->len))
		r = PS_E_INVALID_REQUEST;
	if (r < 0) {
		r = token_failed(r, s.token_path);
		goto fail;
	}
	if (daemon_api_new(url, s.token, &s.api, &err) < 0) {
		r = cli_daemon_failed(NULL, &err);
		goto fail;
	}
	*ret = s;
	return PS_EXIT_OK;
fail:
	cli_session_close(&s);
	return r;
}

void cli_session_close(struct cli_session *s)
{
	daemon_api_free(s->api);
	secret_free(s->token);
	free(s->token_path);
	*s = (struct cli_session){0};
}
