/* text.h: hex, RFC 3339 times, strict numbers, constant-time compare, JSON
 * strings. */
#include <check.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "text.h"
#include "check_run.h"

START_TEST(hex_encode_cases)
{
	static const uint8_t in[] = { 0x00, 0x01, 0x7f, 0x80, 0xab, 0xff };
	char out[2 * sizeof(in) + 1];

	memset(out, 'x', sizeof(out));
	hex_encode(in, sizeof(in), false, out);
	ck_assert_str_eq(out, "00017f80abff");
	hex_encode(in, sizeof(in), true, out);
	ck_assert_str_eq(out, "00017F80ABFF");
	memset(out, 'x', sizeof(out));
	hex_encode(in, 0, false, out);
	ck_assert_str_eq(out, "");
}
END_TEST

START_TEST(hex_decode_cases)
{
	uint8_t out[4], sentinel[4] = { 0xa5, 0xa5, 0xa5, 0xa5 };

	ck_assert_int_eq(hex_decode("00017f80", out, 4), 0);
	ck_assert_uint_eq(out[0], 0x00);
	ck_assert_uint_eq(out[1], 0x01);
	ck_assert_uint_eq(out[2], 0x7f);
	ck_assert_uint_eq(out[3], 0x80);
	ck_assert_int_eq(hex_decode("aBcDeF09", out, 4), 0);
	ck_assert_uint_eq(out[0], 0xab);
	ck_assert_uint_eq(out[1], 0xcd);
	ck_assert_uint_eq(out[2], 0xef);
	ck_assert_uint_eq(out[3], 0x09);
	ck_assert_int_eq(hex_decode("", out, 0), 0);

	static const char *const bad[] = {
		"", "0", "0001", "000102", "0001020", "000102030", "0001020304", "0g010203",
		"000102 3", " 0010203", "00010203 ", "0x010203", "-0010203", "000102\n3",
		/* NOLINTNEXTLINE(bugprone-suspicious-missing-comma): ends the \xa9 escape */
		"00\xc3\xa9" "0203",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		memcpy(out, sentinel, sizeof(out));
		ck_assert_msg(hex_decode(bad[i], out, 4) == PS_E_INVALID_REQUEST, "'%s' accepted",
			      bad[i]);
	}
	ck_assert_int_eq(hex_decode("a", out, 0), PS_E_INVALID_REQUEST);
}
END_TEST

START_TEST(hex_round_trip)
{
	uint8_t in[256], back[256];
	char text[513];

	for (int i = 0; i < 256; i++)
		in[i] = (uint8_t)i;
	hex_encode(in, sizeof(in), true, text);
	ck_assert_int_eq(hex_decode(text, back, sizeof(back)), 0);
	ck_assert_mem_eq(in, back, sizeof(in));
	hex_encode(in, sizeof(in), false, text);
	ck_assert_int_eq(hex_decode(text, back, sizeof(back)), 0);
	ck_assert_mem_eq(in, back, sizeof(in));
}
END_TEST

START_TEST(rfc3339)
{
	char out[RFC3339_LEN];

	time_format_rfc3339(0, out);
	ck_assert_str_eq(out, "1970-01-01T00:00:00Z");
	time_format_rfc3339(1700000000, out);
	ck_assert_str_eq(out, "2023-11-14T22:13:20Z");
	time_format_rfc3339(951782400, out); /* leap day */
	ck_assert_str_eq(out, "2000-02-29T00:00:00Z");
	time_format_rfc3339((time_t)INT_MAX, out);
	ck_assert_str_eq(out, "2038-01-19T03:14:07Z");
	time_format_rfc3339((time_t)2147483648LL, out);
	ck_assert_str_eq(out, "2038-01-19T03:14:08Z");
	time_format_rfc3339((time_t)4102444799LL, out);
	ck_assert_str_eq(out, "2099-12-31T23:59:59Z");
	ck_assert_uint_eq(strlen(out), RFC3339_LEN - 1);
	/* UTC whatever the local zone says. */
	setenv("TZ", "America/New_York", 1);
	time_format_rfc3339(0, out);
	ck_assert_str_eq(out, "1970-01-01T00:00:00Z");
}
END_TEST

static unsigned long long uint_ok(const char *text, unsigned long long min,
				  unsigned long long max)
{
	unsigned long long v = 0;

	ck_assert_msg(parse_uint(text, min, max, &v) == 0, "'%s' refused", text);
	return v;
}

START_TEST(parse_uint_good)
{
	ck_assert_uint_eq(uint_ok("0", 0, 10), 0);
	ck_assert_uint_eq(uint_ok("10", 0, 10), 10);
	ck_assert_uint_eq(uint_ok("5", 5, 5), 5);
	ck_assert_uint_eq(uint_ok("65535", 0, 65535), 65535);
	ck_assert_uint_eq(uint_ok("18446744073709551615", 0, ULLONG_MAX), ULLONG_MAX);
	ck_assert_uint_eq(uint_ok("007", 0, 10), 7);
}
END_TEST

START_TEST(parse_uint_bad)
{
	static const char *const bad[] = {
		"", " 1", "1 ", "+1", "-1", "-0", "1a", "a1", "0x10", "1.0", "1e3", "1,000",
		"\t1", "1\n", "65536", "18446744073709551616", "99999999999999999999999999",
	};

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		unsigned long long v = 42;

		ck_assert_msg(parse_uint(bad[i], 0, 65535, &v) == PS_E_INVALID_REQUEST,
			      "'%s' accepted", bad[i]);
		ck_assert_uint_eq(v, 42);
	}
	{
		unsigned long long v = 42;

		ck_assert_int_eq(parse_uint(NULL, 0, 10, &v), PS_E_INVALID_REQUEST);
		ck_assert_int_eq(parse_uint("4", 5, 10, &v), PS_E_INVALID_REQUEST);
		ck_assert_int_eq(parse_uint("11", 5, 10, &v), PS_E_INVALID_REQUEST);
		ck_assert_int_eq(parse_uint("0", 1, 10, &v), PS_E_INVALID_REQUEST);
		ck_assert_uint_eq(v, 42);
	}
}
END_TEST

START_TEST(compare)
{
	uint8_t a[32], b[32];

	memset(a, 0x5a, sizeof(a));
	memcpy(b, a, sizeof(b));
	ck_assert(bytes_equal_ct(a, b, sizeof(a)));
	for (size_t i = 0; i < sizeof(a); i++) {
		b[i] ^= 0x01;
		ck_assert_msg(!bytes_equal_ct(a, b, sizeof(a)), "byte %zu", i);
		b[i] ^= 0x01;
	}
	b[31] = 0;
	ck_assert(bytes_equal_ct(a, b, 31));
	ck_assert(bytes_equal_ct(a, b, 0));
}
END_TEST

/* json_put_string() into a buffer of exactly the documented room; NULL
 * when it refuses s. */
static char *json_string(const char *s)
{
	size_t room = JSON_STRING_ROOM(strlen(s));
	char *out = malloc(room + 1);
	char *end;

	ck_assert_ptr_nonnull(out);
	end = json_put_string(out, s);
	if (!end) {
		free(out);
		return NULL;
	}
	ck_assert_uint_le((size_t)(end - out), room);
	*end = '\0';
	return out;
}

START_TEST(json_string_escapes)
{
	static const struct {
		const char *in, *out;
	} cases[] = {
		{ "", "\"\"" },
		{ "plain ASCII ~!", "\"plain ASCII ~!\"" },
		{ "q\"b\\/", "\"q\\\"b\\\\/\"" },
		{ "\n\r\t\b\f", "\"\\n\\r\\t\\b\\f\"" },
		{ "\x01\x1f\x7f", "\"\\u0001\\u001F\\u007F\"" },
		{ "caf\xc3\xa9", "\"caf\\u00E9\"" },
		/* NOLINTNEXTLINE(misc-misleading-bidirectional): the escape is the point */
		{ "\xe2\x80\xae", "\"\\u202E\"" },             /* right-to-left override */
		{ "\xef\xbf\xbf", "\"\\uFFFF\"" },
		{ "\xf0\x9f\x98\x80", "\"\\uD83D\\uDE00\"" },  /* U+1F600: a pair */
		{ "\xf4\x8f\xbf\xbf", "\"\\uDBFF\\uDFFF\"" },  /* U+10FFFF, the last */
		/* The worst case for room: every byte a six-byte escape. */
		{ "\x01\x01\x01", "\"\\u0001\\u0001\\u0001\"" },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char *got = json_string(cases[i].in);

		ck_assert_msg(got, "case %zu refused", i);
		ck_assert_str_eq(got, cases[i].out);
		free(got);
	}
}
END_TEST

START_TEST(json_string_refuses_bad_utf8)
{
	static const char *const bad[] = {
		"\x80",                 /* a continuation byte alone */
		"a\xbf",
		"\xc0\x80",             /* overlong NUL */
		"\xc1\xbf",             /* overlong */
		"\xe0\x80\x80",         /* overlong three-byte form */
		"\xf0\x80\x80\x80",     /* overlong four-byte form */
		"\xed\xa0\x80",         /* U+D800, a surrogate */
		"\xed\xbf\xbf",         /* U+DFFF */
		"\xf4\x90\x80\x80",     /* U+110000, past the last */
		"\xf5\x80\x80\x80",
		"\xff",
		"\xc3",                 /* cut short by the end */
		"\xe2\x80",
		"\xf0\x9f\x98",
		"\xc3(",                /* cut short by the next character */
		"ok \xe2\x80 then more",
	};

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		ck_assert_msg(!json_string(bad[i]), "case %zu accepted", i);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("text");
	TCase *tc = tcase_create("text");
	int failed;

	tcase_add_test(tc, hex_encode_cases);
	tcase_add_test(tc, hex_decode_cases);
	tcase_add_test(tc, hex_round_trip);
	tcase_add_test(tc, rfc3339);
	tcase_add_test(tc, parse_uint_good);
	tcase_add_test(tc, parse_uint_bad);
	tcase_add_test(tc, compare);
	tcase_add_test(tc, json_string_escapes);
	tcase_add_test(tc, json_string_refuses_bad_utf8);
	suite_add_tcase(s, tc);
	failed = check_run(s);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
