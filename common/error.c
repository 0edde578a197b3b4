#include "error.h"

#include <stddef.h>

struct ps_error_entry {
	int value;
	int status;
	const char *code;
	const char *message;
};

static const struct ps_error_entry table[] = {
#define PS_ERROR_ROW(name, value, status, code, message) {(value), (status), (code), (message)},
	PS_ERROR_TABLE(PS_ERROR_ROW)
#undef PS_ERROR_ROW
};

static const struct ps_error_entry *lookup(int err)
{
	for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++)
		if (table[i].value == err)
			return &table[i];
	/* Unknown values are internal errors: never leak a made-up code. */
	for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++)
		if (table[i].value == PS_E_INTERNAL)
			return &table[i];
	return &table[0];
}

const char *ps_strerror(int err)
{
	return lookup(err)->message;
}

int ps_error_http_status(int err)
{
	return lookup(err)->status;
}

const char *ps_error_code(int err)
{
	return lookup(err)->code;
}
