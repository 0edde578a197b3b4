/* code_validate: what a verification code may be. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "code.h"
#include "error.h"
#include "check_run.h"

#define AZURE_CODE "3F2A9C1B7E6D5A4F3E2D1C0B9A8F7E6D5C4B3A2F1E0D9C8B"

static int check_str(const char *s)
{
	return code_validate(s, strlen(s));
}

START_TEST(good_codes)
{
	char buf[CODE_MAX_LEN + 1];

	ck_assert_uint_eq(strlen(AZURE_CODE), 48);
	ck_assert_int_eq(check_str(AZURE_CODE), 0);
	ck_assert_int_eq(check_str("a"), 0);
	ck_assert_int_eq(check_str("0"), 0);
	ck_assert_int_eq(check_str("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"), 0);
	memset(buf, 'F', 64);
	buf[64] = '\0';
	ck_assert_int_eq(check_str(buf), 0);
	/* Only len bytes count: what follows them is not looked at. */
	ck_assert_int_eq(code_validate("ABC/=", 3), 0);
}
END_TEST

START_TEST(bad_codes)
{
	static const char *const bad[] = {
		"3F2A/9C1B", "3F2A=", "=", "/", "3F2A 9C1B", " 3F2A", "3F2A ", "3F2A\r", "3F2A\n",
		"3F2A\r\n", "\n", "caf\xc3\xa9", "\xff", "3F2A-9C1B", "3F2A_9C1B", "3F2A.9C1B",
		"+", "%41", "3F2A\t", "\"3F2A\"", "3F2A;", "3F2A,", "\x7f", "A\x80",
	};
	char buf[CODE_MAX_LEN + 2];

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		ck_assert_msg(check_str(bad[i]) == PS_E_INVALID_CODE, "'%s' accepted", bad[i]);
	ck_assert_int_eq(code_validate("", 0), PS_E_INVALID_CODE);
	ck_assert_int_eq(code_validate(NULL, 0), PS_E_INVALID_CODE);
	ck_assert_int_eq(code_validate(NULL, 5), PS_E_INVALID_CODE);
	/* A NUL inside the given length (a JSON "\u0000" would put one there). */
	ck_assert_int_eq(code_validate("3F2A\0" "9C1B", 9), PS_E_INVALID_CODE);
	ck_assert_int_eq(code_validate("\0", 1), PS_E_INVALID_CODE);
	ck_assert_int_eq(code_validate("3F2A\0", 5), PS_E_INVALID_CODE);
	memset(buf, 'F', 65);
	buf[65] = '\0';
	ck_assert_int_eq(check_str(buf), PS_E_INVALID_CODE);
	ck_assert_int_eq(code_validate(buf, 65), PS_E_INVALID_CODE);
	ck_assert_int_eq(code_validate(buf, 64), 0);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("code");
	TCase *tc = tcase_create("validate");
	int failed;

	tcase_add_test(tc, good_codes);
	tcase_add_test(tc, bad_codes);
	suite_add_tcase(s, tc);
	failed = check_run(s);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
