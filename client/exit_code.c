#include "exit_code.h"

#include <stddef.h>

#include "error.h"

const char *exit_code_describe(int code)
{
	switch (code) {
#define PS_EXIT_CASE(name, value, text) \
	case name:                      \
		return text;
		EXIT_CODE_TABLE(PS_EXIT_CASE)
#undef PS_EXIT_CASE
	}
	return NULL;
}

int exit_code_for_status(long status)
{
	switch (status) {
	case 401:
	case 403:
		return PS_EXIT_AUTH;
	case 400:
	case 404:
	case 405:
	case 413:
	case 415:
		return PS_EXIT_BAD_INPUT;
	default:
		return PS_EXIT_DAEMON;
	}
}

int exit_code_for_daemon_error(const struct daemon_error *e)
{
	switch (e->failure) {
	case DAEMON_FAILURE_INPUT:
		return PS_EXIT_BAD_INPUT;
	case DAEMON_FAILURE_UNREACHABLE:
		return PS_EXIT_UNREACHABLE;
	case DAEMON_FAILURE_STATUS:
		return exit_code_for_status(e->status);
	case DAEMON_FAILURE_MALFORMED:
		return PS_EXIT_DAEMON;
	case DAEMON_FAILURE_NONE:
	case DAEMON_FAILURE_INTERNAL:
		break;
	}
	return PS_EXIT_INTERNAL;
}

int exit_code_for_azure_error(const struct azure_error *e)
{
	switch (e->failure) {
	case AZURE_FAILURE_REFUSED:
		return PS_EXIT_AZURE_REFUSED;
	case AZURE_FAILURE_UNREACHABLE:
		return PS_EXIT_AZURE_UNREACHABLE;
	case AZURE_FAILURE_UNAUTHENTICATED:
		return PS_EXIT_AZURE_UNAUTHENTICATED;
	case AZURE_FAILURE_MISMATCH:
		return PS_EXIT_THUMBPRINT_MISMATCH;
	case AZURE_FAILURE_INPUT:
		return PS_EXIT_USAGE;
	case AZURE_FAILURE_MALFORMED:
	case AZURE_FAILURE_INTERNAL:
	case AZURE_FAILURE_NONE:
		break;
	}
	return PS_EXIT_INTERNAL;
}

int exit_code_for_token_error(int err)
{
	return err == PS_E_NOMEM ? PS_EXIT_INTERNAL : PS_EXIT_AUTH;
}

int exit_code_for_output_error(int err)
{
	return err == PS_E_NOMEM ? PS_EXIT_INTERNAL : PS_EXIT_OUTPUT;
}
