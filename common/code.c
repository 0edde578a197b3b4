#include "code.h"

#include "error.h"

static int is_code_char(unsigned char c)
{
	/* Spelled out rather than isalnum(): no locale may widen the set. */
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

int code_validate(const char *code, size_t len)
{
	if (!code || len == 0 || len > CODE_MAX_LEN)
		return PS_E_INVALID_CODE;
	for (size_t i = 0; i < len; i++)
		if (!is_code_char((unsigned char)code[i]))
			return PS_E_INVALID_CODE;
	return 0;
}
