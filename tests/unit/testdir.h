/* Throwaway directories for the unit tests. */
#ifndef POPSIGN_TESTDIR_H
#define POPSIGN_TESTDIR_H

#include <check.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static inline int testdir_remove_entry(const char *path, const struct stat *st, int flag,
				       struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

/* Removes top and everything in it; 0 or nftw()'s error. */
static inline int testdir_remove(const char *top)
{
	return nftw(top, testdir_remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* A new directory under /tmp; free it with tmpdir_done(). */
static inline char *make_tmpdir(void)
{
	char *tmp = strdup("/tmp/popsign-test-XXXXXX");

	ck_assert_ptr_nonnull(tmp);
	ck_assert_ptr_nonnull(mkdtemp(tmp));
	return tmp;
}

/* Removes tmp and everything in it, then frees the string. */
static inline void tmpdir_done(char *tmp)
{
	ck_assert_int_eq(testdir_remove(tmp), 0);
	free(tmp);
}

#endif
