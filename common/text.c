#include "text.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

/* Decodes the UTF-8 sequence at *s: its code point, and *s moved past it;
 * or -1 for a byte that cannot start or continue a valid sequence. */
static long utf8_next(const unsigned char **s)
{
	const unsigned char *p = *s;
	long min, cp;
	int more;

	if (p[0] < 0x80) {
		*s += 1;
		return p[0];
	}
	if (p[0] >= 0xc2 && p[0] <= 0xdf) {
		more = 1;
		min = 0x80;
	} else if (p[0] >= 0xe0 && p[0] <= 0xef) {
		more = 2;
		min = 0x800;
	} else if (p[0] >= 0xf0 && p[0] <= 0xf4) {
		more = 3;
		min = 0x10000;
	} else {
		return -1;
	}
	cp = p[0] & (0x3f >> more);
	for (int k = 1; k <= more; k++) {
		if ((p[k] & 0xc0) != 0x80) /* the NUL ends this loop too */
			return -1;
		cp = cp << 6 | (p[k] & 0x3f);
	}
	if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
		return -1;
	*s += 1 + more;
	return cp;
}

char *json_put_string(char *p, const char *s)
{
	const unsigned char *u = (const unsigned char *)s;

	*p++ = '"';
	while (*u) {
		long cp = utf8_next(&u);
		const char *esc = cp == '"' ? "\\\"" : cp == '\\' ? "\\\\" : cp == '\n' ? "\\n" :
				  cp == '\r' ? "\\r" : cp == '\t' ? "\\t" : cp == '\b' ? "\\b" :
				  cp == '\f' ? "\\f" : NULL;

		if (cp < 0)
			return NULL;
		if (esc) {
			memcpy(p, esc, 2);
			p += 2;
		} else if (cp >= 0x20 && cp < 0x7f) {
			*p++ = (char)cp;
		} else if (cp < 0x10000) {
			p += sprintf(p, "\\u%04lX", cp);
		} else {
			cp -= 0x10000;
			p += sprintf(p, "\\u%04lX\\u%04lX", 0xd800 + (cp >> 10), 0xdc00 + (cp & 0x3ff));
		}
	}
	*p++ = '"';
	return p;
}
