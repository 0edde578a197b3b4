/* Cleanup helpers for __attribute__((cleanup)) (every destructor accepts
 * NULL), and the few one-liners everything uses. */
#ifndef POPSIGN_UTIL_H
#define POPSIGN_UTIL_H

#include <pthread.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static inline void freep(void *p)
{
	free(*(void **)p);
}

/* NOLINTNEXTLINE(readability-non-const-parameter): a cleanup handler's signature */
static inline void closep(int *fd)
{
	if (*fd >= 0)
		close(*fd);
}

#define _cleanup_(f) __attribute__((cleanup(f)))
#define _cleanup_free_ _cleanup_(freep)
#define _cleanup_close_ _cleanup_(closep)

#define ELEMENTSOF(a) (sizeof(a) / sizeof((a)[0]))

/* Hands ownership of *p to the caller and leaves NULL behind. */
#define TAKE_PTR(p)                            \
	({                                     \
		__typeof__(p) *_pp = &(p);     \
		__typeof__(p) _v = *_pp;       \
		*_pp = NULL;                   \
		_v;                            \
	})

/* A condition variable whose timed waits take CLOCK_MONOTONIC deadlines
 * (immune to the wall clock being set). */
static inline void cond_init_monotonic(pthread_cond_t *c)
{
	pthread_condattr_t attr;

	pthread_condattr_init(&attr);
	pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
	pthread_cond_init(c, &attr);
	pthread_condattr_destroy(&attr);
}

#endif
