/* The exit codes of popsign: one fixed table, printed by `popsign --help`.
 *
 * Scripts depend on these numbers: never renumber or reorder them, only
 * append.  Codes 8 to 11 come from the Azure commands (dps, iothub); those
 * commands return the popsignd codes 3 to 6 for popsignd's failures. */
#ifndef POPSIGN_EXIT_CODE_H
#define POPSIGN_EXIT_CODE_H

#include "azure_error.h"
#include "daemon_api.h"

/* X(name, value, description shown by --help) */
#define EXIT_CODE_TABLE(X)                                                                     \
	X(PS_EXIT_OK, 0, "success")                                                            \
	X(PS_EXIT_INTERNAL, 1, "internal or unexpected error")                                 \
	X(PS_EXIT_USAGE, 2, "usage error: bad options or arguments")                           \
	X(PS_EXIT_UNREACHABLE, 3, "popsignd unreachable: connection failed or timed out")      \
	X(PS_EXIT_AUTH, 4,                                                                     \
	  "authentication refused (HTTP 401, 403), token file missing or insecure")            \
	X(PS_EXIT_BAD_INPUT, 5,                                                                \
	  "bad input: invalid key or code, unknown key (HTTP 400/404/405/413/415)")        \
	X(PS_EXIT_DAEMON, 6, "popsignd failed (HTTP 5xx) or sent a malformed answer")          \
	X(PS_EXIT_OUTPUT, 7, "output error: cannot write the file or standard output")         \
	X(PS_EXIT_AZURE_REFUSED, 8,                                                            \
	  "Azure refused: HTTP 4xx but 401/403/429, or the verification failed")              \
	X(PS_EXIT_AZURE_UNREACHABLE, 9,                                                        \
	  "Azure unreachable: no connection, timeout, or 5xx/429 after 3 tries")               \
	X(PS_EXIT_AZURE_UNAUTHENTICATED, 10,                                                   \
	  "not authenticated to Azure: no credentials, Azure AD said no, 401/403")             \
	X(PS_EXIT_THUMBPRINT_MISMATCH, 11,                                                     \
	  "the certificate in Azure is not the key's CA certificate: nothing signed")

enum ps_exit {
#define PS_EXIT_ENUM(name, value, text) name = (value),
	EXIT_CODE_TABLE(PS_EXIT_ENUM)
#undef PS_EXIT_ENUM
};

/* The description of code from the table, or NULL for a value not in it. */
const char *exit_code_describe(int code);

/* The exit code for an HTTP error status from popsignd: 401 and 403 are
 * PS_EXIT_AUTH; 400, 404, 405, 413 and 415 PS_EXIT_BAD_INPUT; anything else
 * (5xx, 429, a status API v1 never sends) PS_EXIT_DAEMON. */
int exit_code_for_status(long status);

/* The exit code for a failed popsignd request, from e->failure (and
 * e->status for DAEMON_FAILURE_STATUS).  PS_EXIT_INTERNAL for
 * DAEMON_FAILURE_NONE: a caller that got here has a failure to report. */
int exit_code_for_daemon_error(const struct daemon_error *e);

/* The exit code for a failed Azure operation, from e->failure:
 * AZURE_FAILURE_REFUSED PS_EXIT_AZURE_REFUSED, _UNREACHABLE
 * PS_EXIT_AZURE_UNREACHABLE, _UNAUTHENTICATED PS_EXIT_AZURE_UNAUTHENTICATED,
 * _MISMATCH PS_EXIT_THUMBPRINT_MISMATCH, _INPUT PS_EXIT_USAGE; an answer
 * Azure's API does not document (_MALFORMED), _INTERNAL and _NONE are
 * PS_EXIT_INTERNAL. */
int exit_code_for_azure_error(const struct azure_error *e);

/* The exit code for a failure to read the bearer token file (an error from
 * secret_read_file() or bearer_token_valid()): PS_EXIT_AUTH, or
 * PS_EXIT_INTERNAL for PS_E_NOMEM. */
int exit_code_for_token_error(int err);

/* The exit code for a failure to write the output: PS_EXIT_OUTPUT, or
 * PS_EXIT_INTERNAL for PS_E_NOMEM. */
int exit_code_for_output_error(int err);

#endif
