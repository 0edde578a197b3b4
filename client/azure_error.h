/* What went wrong talking to Azure (Resource Manager, Azure AD, the
 * instance metadata endpoint, the Azure CLI), in one shape for every
 * Azure-side module: the kind of failure decides popsign's exit code, the
 * rest is shown to the user.  Azure's own words (an ARM error message and
 * code, an Azure AD error and error_description) are kept verbatim. */
#ifndef POPSIGN_AZURE_ERROR_H
#define POPSIGN_AZURE_ERROR_H

#include <stdio.h>

#define AZURE_ERROR_CODE_MAX 128
#define AZURE_ERROR_MESSAGE_MAX 4096

enum azure_failure {
	AZURE_FAILURE_NONE = 0,
	AZURE_FAILURE_INTERNAL,        /* here: out of memory, libcurl, a child process */
	AZURE_FAILURE_INPUT,           /* an option or variable refused before sending */
	AZURE_FAILURE_UNREACHABLE,     /* no answer, or 429/5xx, after every try */
	AZURE_FAILURE_REFUSED,         /* ARM said no: 4xx other than 401 and 403 */
	AZURE_FAILURE_UNAUTHENTICATED, /* no credential, Azure AD said no, ARM 401/403 */
	AZURE_FAILURE_MALFORMED,       /* an answer that is not what the API documents */
	AZURE_FAILURE_MISMATCH,        /* the certificate in Azure is not the key's */
};

struct azure_error {
	enum azure_failure failure;
	long status;                          /* HTTP status of the answer, 0 without */
	char code[AZURE_ERROR_CODE_MAX];      /* Azure's code as text ("404015",
					       * "InvalidAuthenticationToken",
					       * "invalid_client"), or "" */
	char message[AZURE_ERROR_MESSAGE_MAX]; /* Azure's message as sent, or one made
						* here; may be truncated */
	unsigned tries;                       /* requests sent for it, 0 if none */
};

/* Fills *err with failure and a printf-formatted message; no status, code
 * or tries.  Accepts NULL err. */
void azure_error_set(struct azure_error *err, enum azure_failure failure, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Puts a printf-formatted text and ": " in front of err's message (cut
 * to fit). */
void azure_error_prefix(struct azure_error *err, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* Copies text into buf of size n, cutting at n - 1 bytes without splitting
 * a UTF-8 sequence. */
void azure_error_copy(char *buf, size_t n, const char *text);

/* Prints e to f: "popsign: " and the message, then " (CODE, HTTP STATUS)",
 * " (HTTP STATUS)" or nothing, as known, and ", after N tries" when more
 * than one request was sent.  Control characters are replaced as
 * output_printable() does, except that each line break of the message
 * ("\n" or "\r\n") starts a new line indented by two spaces. */
void azure_error_print(FILE *f, const struct azure_error *e);

#endif
