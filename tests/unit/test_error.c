/* The error table: every entry answers with its own status, code and
 * message, and values outside it are internal errors. */
#include <check.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "check_run.h"

struct row {
	const char *name;
	int value, status;
	const char *code, *message;
};

static const struct row rows[] = {
#define ROW(name, value, status, code, message) { #name, (value), (status), (code), (message) },
	PS_ERROR_TABLE(ROW)
#undef ROW
};

#define N_ROWS (sizeof(rows) / sizeof(rows[0]))

START_TEST(every_entry)
{
	for (size_t i = 0; i < N_ROWS; i++) {
		const struct row *r = &rows[i];

		ck_assert_msg(ps_error_http_status(r->value) == r->status, "%s: status %d, want %d",
			      r->name, ps_error_http_status(r->value), r->status);
		ck_assert_str_eq(ps_error_code(r->value), r->code);
		ck_assert_str_eq(ps_strerror(r->value), r->message);
		ck_assert_msg(r->status >= 200 && r->status <= 599, "%s: status %d", r->name,
			      r->status);
		ck_assert_msg(r->code[0] != '\0' && r->message[0] != '\0', "%s: empty", r->name);
		/* API codes are stable snake_case identifiers. */
		ck_assert_msg(strspn(r->code, "abcdefghijklmnopqrstuvwxyz_") == strlen(r->code),
			      "%s: code '%s'", r->name, r->code);
		/* Only PS_OK is success, and every error is negative. */
		ck_assert_msg((r->value == 0) == (r->status == 200), "%s", r->name);
		ck_assert_msg(r->value <= 0, "%s: value %d", r->name, r->value);
	}
}
END_TEST

START_TEST(values_distinct)
{
	for (size_t i = 0; i < N_ROWS; i++)
		for (size_t j = i + 1; j < N_ROWS; j++) {
			ck_assert_msg(rows[i].value != rows[j].value, "%s and %s share %d",
				      rows[i].name, rows[j].name, rows[i].value);
			ck_assert_msg(strcmp(rows[i].message, rows[j].message) != 0,
				      "%s and %s share a message", rows[i].name, rows[j].name);
		}
}
END_TEST

START_TEST(known_values)
{
	/* The statuses the HTTP API documents. */
	ck_assert_int_eq(ps_error_http_status(PS_OK), 200);
	ck_assert_int_eq(ps_error_http_status(PS_E_INVALID_REQUEST), 400);
	ck_assert_str_eq(ps_error_code(PS_E_INVALID_CODE), "invalid_verification_code");
	ck_assert_int_eq(ps_error_http_status(PS_E_INVALID_CODE), 400);
	ck_assert_int_eq(ps_error_http_status(PS_E_UNAUTHORIZED), 401);
	ck_assert_int_eq(ps_error_http_status(PS_E_FORBIDDEN), 403);
	ck_assert_int_eq(ps_error_http_status(PS_E_NOT_FOUND), 404);
	ck_assert_int_eq(ps_error_http_status(PS_E_METHOD), 405);
	ck_assert_int_eq(ps_error_http_status(PS_E_TOO_LARGE), 413);
	ck_assert_int_eq(ps_error_http_status(PS_E_MEDIA_TYPE), 415);
	ck_assert_int_eq(ps_error_http_status(PS_E_TOKEN), 503);
	ck_assert_str_eq(ps_error_code(PS_E_TOKEN), "token_unavailable");
	ck_assert_int_eq(ps_error_http_status(PS_E_INTERNAL), 500);
	ck_assert_str_eq(ps_error_code(PS_E_INTERNAL), "internal_error");
	/* Local failures never reveal detail to a caller. */
	ck_assert_str_eq(ps_error_code(PS_E_CONFIG), "internal_error");
	ck_assert_str_eq(ps_error_code(PS_E_PERMISSIONS), "internal_error");
	ck_assert_str_eq(ps_error_code(PS_E_NOMEM), "internal_error");
}
END_TEST

START_TEST(unknown_values)
{
	static const int unknown[] = { 1, 2, 200, -22, -100, -999, INT_MIN, INT_MAX, -1000000 };

	for (size_t i = 0; i < sizeof(unknown) / sizeof(unknown[0]); i++) {
		ck_assert_int_eq(ps_error_http_status(unknown[i]), 500);
		ck_assert_str_eq(ps_error_code(unknown[i]), "internal_error");
		ck_assert_str_eq(ps_strerror(unknown[i]), "internal error");
	}
}
END_TEST

int main(void)
{
	Suite *s = suite_create("error");
	TCase *tc = tcase_create("table");
	int failed;

	tcase_add_test(tc, every_entry);
	tcase_add_test(tc, values_distinct);
	tcase_add_test(tc, known_values);
	tcase_add_test(tc, unknown_values);
	suite_add_tcase(s, tc);
	failed = check_run(s);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
