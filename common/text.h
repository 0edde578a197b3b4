/* Small text encodings shared by the daemon, the client and the tests. */
#ifndef POPSIGN_TEXT_H
#define POPSIGN_TEXT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

/* Room for an RFC 3339 UTC time "2026-11-26T17:45:52Z" and its NUL. */
#define RFC3339_LEN 21

/* Writes 2*len hex digits and a NUL to out (which must hold 2*len+1 bytes). */
void hex_encode(const uint8_t *in, size_t len, bool upper, char *out);

/* Decodes exactly 2*outlen hex digits of text (either case) into out.
 * Returns 0, or PS_E_INVALID_REQUEST for a wrong length or a non-hex digit. */
int hex_decode(const char *text, uint8_t *out, size_t outlen);

/* Formats t as "YYYY-MM-DDTHH:MM:SSZ" into out (RFC3339_LEN bytes). */
void time_format_rfc3339(time_t t, char out[RFC3339_LEN]);

/* Parses a whole decimal number in [min, max]: no sign, no spaces, no
 * trailing text.  Returns 0 and sets *ret, or PS_E_INVALID_REQUEST. */
int parse_uint(const char *text, unsigned long long min, unsigned long long max,
	       unsigned long long *ret);

/* Bytes json_put_string() may write for a string of len bytes. */
#define JSON_STRING_ROOM(len) (6 * (len) + 2)

/* Writes s as a JSON string, quotes included, at p and returns the end, or
 * NULL if s is not valid UTF-8 (RFC 3629: no overlong forms, no surrogates).
 * The output is ASCII and escaped as jansson escapes with JSON_ENSURE_ASCII
 * (but for DEL, which jansson leaves as it is):
 * quote, backslash and the usual control characters by their short escapes,
 * other control characters, DEL and every non-ASCII character as \uXXXX
 * (a pair above U+FFFF).  p must have room for JSON_STRING_ROOM(strlen(s)) bytes. */
char *json_put_string(char *p, const char *s);

/* Constant-time comparison of two equal-length buffers: true if equal. */
bool bytes_equal_ct(const void *a, const void *b, size_t len);

#endif
