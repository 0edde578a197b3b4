/* secret_read_file: PIN and token files, their modes, sizes and contents. */
#include <check.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "error.h"
#include "secret.h"
#include "check_run.h"

static char dir[PATH_MAX];
static char path[PATH_MAX + 32];

static void setup(void)
{
	snprintf(dir, sizeof(dir), "%s/test_secret.XXXXXX",
		 getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
	ck_assert_ptr_nonnull(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/pin", dir);
}

static void teardown(void)
{
	char sub[sizeof(path) + 8];

	unlink(path);
	snprintf(sub, sizeof(sub), "%s/sub", dir);
	rmdir(sub);
	rmdir(dir);
}

static void write_secret(const char *data, size_t len, mode_t mode)
{
	FILE *f;

	unlink(path);
	f = fopen(path, "w");
	ck_assert_ptr_nonnull(f);
	ck_assert_uint_eq(fwrite(data, 1, len, f), len);
	ck_assert_int_eq(fclose(f), 0);
	ck_assert_int_eq(chmod(path, mode), 0);
}

/* Reads path and checks the secret is exactly want (want_len bytes). */
static void read_ok(const char *want, size_t want_len)
{
	struct secret *s = NULL;
	int r = secret_read_file(path, &s);

	ck_assert_msg(r == 0, "refused: %d", r);
	ck_assert_ptr_nonnull(s);
	ck_assert_uint_eq(s->len, want_len);
	ck_assert_mem_eq(s->data, want, want_len);
	ck_assert_int_eq(s->data[s->len], '\0');
	secret_free(s);
}

static void read_refused(const char *p, int want)
{
	struct secret *sentinel = (struct secret *)0x1, *s = sentinel;
	int r = secret_read_file(p, &s);

	ck_assert_msg(r == want, "got %d, want %d", r, want);
	ck_assert_ptr_eq(s, sentinel);
}

#define SECRET_OK(text, mode, want)                       \
	do {                                              \
		write_secret(text, sizeof(text) - 1, mode); \
		read_ok(want, sizeof(want) - 1);          \
	} while (0)

START_TEST(good_files)
{
	SECRET_OK("123456", 0600, "123456");
	SECRET_OK("123456\n", 0600, "123456");
	SECRET_OK("123456\r\n", 0600, "123456");
	SECRET_OK("123456\n", 0400, "123456");
	/* Only one line end is trimmed: the rest is the secret's. */
	SECRET_OK("123456\n\n", 0600, "123456\n");
	SECRET_OK("12 34\t56 \n", 0600, "12 34\t56 ");
	SECRET_OK("\r\n1\n", 0600, "\r\n1");
	SECRET_OK("x", 0600, "x");
	secret_free(NULL);
}
END_TEST

START_TEST(size_limit)
{
	char buf[SECRET_MAX_SIZE + 2];

	memset(buf, 'p', sizeof(buf));
	write_secret(buf, SECRET_MAX_SIZE, 0600);
	read_ok(buf, SECRET_MAX_SIZE);
	/* 1024 bytes of PIN and its newline: 1025 bytes, over the limit. */
	buf[SECRET_MAX_SIZE] = '\n';
	write_secret(buf, SECRET_MAX_SIZE + 1, 0600);
	read_refused(path, PS_E_TOO_LARGE);
	buf[SECRET_MAX_SIZE] = 'p';
	write_secret(buf, SECRET_MAX_SIZE + 1, 0600);
	read_refused(path, PS_E_TOO_LARGE);
}
END_TEST

START_TEST(modes_refused)
{
	/* Any group or other bit: read, write or execute. */
	static const mode_t bad[] = { 0640, 0604, 0620, 0602, 0610, 0601, 0644, 0666, 0660, 0607 };

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		write_secret("123456\n", 7, bad[i]);
		read_refused(path, PS_E_PERMISSIONS);
	}
}
END_TEST

START_TEST(not_found_and_not_files)
{
	char sub[sizeof(path) + 8], link[sizeof(path) + 8];

	read_refused(path, PS_E_NOT_FOUND);
	snprintf(sub, sizeof(sub), "%s/sub", dir);
	ck_assert_int_eq(mkdir(sub, 0700), 0);
	read_refused(sub, PS_E_INVALID_REQUEST);
	read_refused("/dev/null", PS_E_INVALID_REQUEST);

	/* A symlink to a good file is followed: the target's mode counts. */
	write_secret("123456\n", 7, 0600);
	snprintf(link, sizeof(link), "%s/link", dir);
	ck_assert_int_eq(symlink(path, link), 0);
	{
		struct secret *s = NULL;

		ck_assert_int_eq(secret_read_file(link, &s), 0);
		ck_assert_str_eq(s->data, "123456");
		secret_free(s);
	}
	ck_assert_int_eq(chmod(path, 0644), 0);
	read_refused(link, PS_E_PERMISSIONS);
	unlink(link);
}
END_TEST

START_TEST(contents_refused)
{
	write_secret("", 0, 0600);
	read_refused(path, PS_E_INVALID_REQUEST);
	write_secret("\n", 1, 0600);
	read_refused(path, PS_E_INVALID_REQUEST);
	write_secret("\r\n", 2, 0600);
	read_refused(path, PS_E_INVALID_REQUEST);
	write_secret("12\0" "34\n", 6, 0600);
	read_refused(path, PS_E_INVALID_REQUEST);
	write_secret("\0", 1, 0600);
	read_refused(path, PS_E_INVALID_REQUEST);
	write_secret("1234\0", 5, 0600);
	read_refused(path, PS_E_INVALID_REQUEST);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("secret");
	TCase *tc = tcase_create("read_file");
	int failed;

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, good_files);
	tcase_add_test(tc, size_limit);
	tcase_add_test(tc, modes_refused);
	tcase_add_test(tc, not_found_and_not_files);
	tcase_add_test(tc, contents_refused);
	suite_add_tcase(s, tc);
	failed = check_run(s);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
