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

/* Removes dir and everything in it; 0 or nftw()'s error. */
static inline int testdir_remove(const char *dir)
{
	return nftw(dir, testdir_remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* A new directory under /tmp; free it with tmpdir_done(). */
static inline char *make_tmpdir(void)
{
	char *dir = strdup("/tmp/popsign-test-XXXXXX");

	ck_assert_ptr_nonnull(dir);
	ck_assert_ptr_nonnull(mkdtemp(dir));
	return dir;
}

/* Removes dir and everything in it, then frees the string. */
static inline void tmpdir_done(char *dir)
{
	ck_assert_int_eq(testdir_remove(dir), 0);
	free(dir);
}

#endif
