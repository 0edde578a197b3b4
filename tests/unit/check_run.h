/* The end of every unit test program's main(). */
#ifndef POPSIGN_CHECK_RUN_H
#define POPSIGN_CHECK_RUN_H

#include <check.h>

/* Runs every test of s (each in a child process, Check's default) and
 * returns how many failed. */
static inline int check_run(Suite *s)
{
	SRunner *sr = srunner_create(s);
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed;
}

#endif
