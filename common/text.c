#include "text.h"

#include <errno.h>
#include <stdlib.h>

#include <openssl/crypto.h>

#include "error.h"

void hex_encode(const uint8_t *in, size_t len, bool upper, char *out)
{
	const char *digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";

	for (size_t i = 0; i < len; i++) {
		out[2 * i] = digits[in[i] >> 4];
		out[2 * i + 1] = digits[in[i] & 0x0f];
	}
	out[2 * len] = '\0';
}

static int hex_value(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

int hex_decode(const char *text, uint8_t *out, size_t outlen)
{
	for (size_t i = 0; i < outlen; i++) {
		int hi = text[2 * i] ? hex_value(text[2 * i]) : -1;
		int lo = hi >= 0 && text[2 * i + 1] ? hex_value(text[2 * i + 1]) : -1;

		if (hi < 0 || lo < 0)
			return PS_E_INVALID_REQUEST;
		out[i] = (uint8_t)(hi << 4 | lo);
	}
	return text[2 * outlen] == '\0' ? 0 : PS_E_INVALID_REQUEST;
}

void time_format_rfc3339(time_t t, char out[RFC3339_LEN])
{
	struct tm tm;

	gmtime_r(&t, &tm);
	strftime(out, RFC3339_LEN, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

int parse_uint(const char *text, unsigned long long min, unsigned long long max,
	       unsigned long long *ret)
{
	char *end = NULL;
	unsigned long long v;

	if (!text || text[0] < '0' || text[0] > '9')
		return PS_E_INVALID_REQUEST;
	errno = 0;
	v = strtoull(text, &end, 10);
	if (errno != 0 || !end || *end != '\0' || v < min || v > max)
		return PS_E_INVALID_REQUEST;
	*ret = v;
	return 0;
}

bool bytes_equal_ct(const void *a, const void *b, size_t len)
{
	return CRYPTO_memcmp(a, b, len) == 0;
}
