/* limits: token buckets (burst, refill, cap, independence, threads) and the
 * per-peer authentication-failure back-off with its fixed-size table.
 *
 * The refill tests sleep a little and check behaviour with generous bounds
 * (a stalled machine only makes them see more tokens, up to the burst). */
#include <check.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "error.h"
#include "ratelimit.h"
#include "check_run.h"

static struct limits *new_ok(size_t n)
{
	struct limits *l = NULL;

	ck_assert_int_eq(limits_new(n, &l), 0);
	ck_assert_ptr_nonnull(l);
	return l;
}

static void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

	while (nanosleep(&ts, &ts) != 0)
		;
}

/* Takes from bucket i until refused (at most max times); returns how many
 * were granted and the refusal's retry_after. */
static unsigned drain(struct limits *l, size_t i, unsigned max, unsigned *retry_after)
{
	unsigned n = 0;

	while (n < max && limits_take(l, i, retry_after) == 0)
		n++;
	return n;
}

START_TEST(burst_then_limited)
{
	struct limits *l = new_ok(1);
	unsigned retry = 0;

	limits_set_bucket(l, 0, 1.0, 5);
	for (int i = 0; i < 5; i++)
		ck_assert_int_eq(limits_take(l, 0, &retry), 0);
	ck_assert_int_eq(limits_take(l, 0, &retry), PS_E_RATE_LIMITED);
	ck_assert_uint_eq(retry, 1); /* one token a second */
	ck_assert_int_eq(limits_take(l, 0, &retry), PS_E_RATE_LIMITED);
	limits_free(l);
}
END_TEST

START_TEST(retry_after_is_time_to_next_token)
{
	struct limits *l = new_ok(1);
	unsigned retry = 0;

	limits_set_bucket(l, 0, 0.1, 1); /* one token every 10 s */
	ck_assert_int_eq(limits_take(l, 0, &retry), 0);
	ck_assert_int_eq(limits_take(l, 0, &retry), PS_E_RATE_LIMITED);
	ck_assert_uint_eq(retry, 10);
	limits_set_bucket(l, 0, 4.0, 1); /* a quarter second: rounded up to 1 */
	ck_assert_int_eq(limits_take(l, 0, &retry), 0);
	ck_assert_int_eq(limits_take(l, 0, &retry), PS_E_RATE_LIMITED);
	ck_assert_uint_eq(retry, 1);
	limits_free(l);
}
END_TEST

START_TEST(defaults)
{
	struct limits *l = new_ok(1);
	unsigned retry = 0;
	unsigned n = drain(l, 0, 1000, &retry);

	/* LIMITS_DEFAULT_BURST at once; a stall could add a refilled token or two. */
	ck_assert_uint_ge(n, LIMITS_DEFAULT_BURST);
	ck_assert_uint_le(n, LIMITS_DEFAULT_BURST + 2);
	ck_assert_uint_eq(retry, 1);
	limits_free(l);
}
END_TEST

START_TEST(refill_over_time)
{
	struct limits *l = new_ok(1);
	unsigned retry = 0;

	limits_set_bucket(l, 0, 100.0, 5);
	ck_assert_uint_ge(drain(l, 0, 100, &retry), 5);
	ck_assert_int_eq(limits_take(l, 0, &retry), PS_E_RATE_LIMITED);
	sleep_ms(30); /* three tokens at 100/s */
	ck_assert_uint_ge(drain(l, 0, 100, &retry), 2);
	limits_free(l);
}
END_TEST

START_TEST(refill_capped_at_burst)
{
	struct limits *l = new_ok(1);
	unsigned retry = 0;
	unsigned n;

	limits_set_bucket(l, 0, 100.0, 3);
	drain(l, 0, 100, &retry);
	sleep_ms(200); /* twenty tokens' worth of time */
	n = drain(l, 0, 100, &retry);
	ck_assert_uint_ge(n, 3);
	ck_assert_uint_le(n, 4);
	limits_free(l);
}
END_TEST

START_TEST(buckets_independent)
{
	struct limits *l = new_ok(3);
	unsigned retry = 0;

	limits_set_bucket(l, 0, 0.1, 2);
	limits_set_bucket(l, 1, 0.1, 3);
	ck_assert_uint_eq(drain(l, 0, 100, &retry), 2);
	ck_assert_int_eq(limits_take(l, 0, &retry), PS_E_RATE_LIMITED);
	ck_assert_uint_eq(drain(l, 1, 100, &retry), 3);
	ck_assert_int_eq(limits_take(l, 2, &retry), 0); /* defaults */
	limits_free(l);
}
END_TEST

START_TEST(no_refill)
{
	struct limits *l = new_ok(2);
	unsigned retry = 0;

	limits_set_bucket(l, 0, 0.0, 2);
	limits_set_bucket(l, 1, 5.0, 0);
	ck_assert_uint_eq(drain(l, 0, 100, &retry), 2);
	ck_assert_uint_gt(retry, LIMITS_AUTH_WINDOW);
	retry = 0;
	ck_assert_uint_eq(drain(l, 1, 100, &retry), 0);
	ck_assert_uint_gt(retry, LIMITS_AUTH_WINDOW);
	limits_free(l);
}
END_TEST

START_TEST(bad_index)
{
	struct limits *l = new_ok(2);
	unsigned retry = 77;

	limits_set_bucket(l, 2, 1.0, 1); /* ignored */
	ck_assert_int_eq(limits_take(l, 2, &retry), PS_E_INTERNAL);
	ck_assert_uint_eq(retry, 77);
	limits_free(l);
	l = new_ok(0);
	ck_assert_int_eq(limits_take(l, 0, &retry), PS_E_INTERNAL);
	limits_free(l);
}
END_TEST

#define TAKERS 8

struct taker {
	struct limits *l;
	unsigned granted;
};

static void *taker(void *p)
{
	struct taker *t = p;
	unsigned retry;

	for (int i = 0; i < 500; i++)
		if (limits_take(t->l, 0, &retry) == 0)
			t->granted++;
	return NULL;
}

/* Threads share a bucket without losing or inventing tokens. */
START_TEST(threads_share_a_bucket)
{
	struct taker t[TAKERS];
	pthread_t th[TAKERS];
	struct limits *l = new_ok(1);
	unsigned total = 0;

	limits_set_bucket(l, 0, 0.0, 1000);
	for (int i = 0; i < TAKERS; i++) {
		t[i] = (struct taker){ .l = l };
		ck_assert_int_eq(pthread_create(&th[i], NULL, taker, &t[i]), 0);
	}
	for (int i = 0; i < TAKERS; i++) {
		pthread_join(th[i], NULL);
		total += t[i].granted;
	}
	ck_assert_uint_eq(total, 1000);
	limits_free(l);
}
END_TEST

START_TEST(auth_failures_then_limited)
{
	struct limits *l = new_ok(0);
	unsigned retry = 0;

	for (int i = 1; i < LIMITS_AUTH_FAILURES; i++) {
		limits_auth_failed(l, "127.0.0.1");
		ck_assert_int_eq(limits_auth_check(l, "127.0.0.1", &retry), 0);
	}
	limits_auth_failed(l, "127.0.0.1");
	ck_assert_int_eq(limits_auth_check(l, "127.0.0.1", &retry), PS_E_RATE_LIMITED);
	ck_assert_uint_ge(retry, LIMITS_AUTH_WINDOW - 5);
	ck_assert_uint_le(retry, LIMITS_AUTH_WINDOW);
	/* Other peers are not affected. */
	ck_assert_int_eq(limits_auth_check(l, "127.0.0.2", &retry), 0);
	ck_assert_int_eq(limits_auth_check(l, "uid=1000", &retry), 0);
	ck_assert_int_eq(limits_auth_check(l, "127.0.0.1:1", &retry), 0);
	limits_free(l);
}
END_TEST

static void fail_times(struct limits *l, const char *peer, int n)
{
	for (int i = 0; i < n; i++)
		limits_auth_failed(l, peer);
}

/* A full table forgets the peers that failed longest ago, and only them. */
START_TEST(auth_table_eviction)
{
	struct limits *l = new_ok(0);
	unsigned retry = 0;
	char peer[32];

	for (int i = 0; i < LIMITS_PEERS_MAX + 10; i++) {
		snprintf(peer, sizeof(peer), "10.%d.%d.%d", i >> 16, (i >> 8) & 255, i & 255);
		fail_times(l, peer, LIMITS_AUTH_FAILURES);
	}
	for (int i = 0; i < LIMITS_PEERS_MAX + 10; i++) {
		int want = i < 10 ? 0 : PS_E_RATE_LIMITED;

		snprintf(peer, sizeof(peer), "10.%d.%d.%d", i >> 16, (i >> 8) & 255, i & 255);
		ck_assert_msg(limits_auth_check(l, peer, &retry) == want, "peer %s", peer);
	}
	/* A forgotten peer starts counting again from nothing. */
	fail_times(l, "10.0.0.0", LIMITS_AUTH_FAILURES - 1);
	ck_assert_int_eq(limits_auth_check(l, "10.0.0.0", &retry), 0);
	limits_auth_failed(l, "10.0.0.0");
	ck_assert_int_eq(limits_auth_check(l, "10.0.0.0", &retry), PS_E_RATE_LIMITED);
	limits_free(l);
}
END_TEST

/* Long peer strings are handled; sharing a long prefix shares the count. */
START_TEST(auth_long_peer)
{
	struct limits *l = new_ok(0);
	char a[200], b[200];
	unsigned retry = 0;

	memset(a, 'a', sizeof(a) - 1);
	a[sizeof(a) - 1] = '\0';
	memcpy(b, a, sizeof(b));
	b[150] = 'b';
	fail_times(l, a, LIMITS_AUTH_FAILURES);
	ck_assert_int_eq(limits_auth_check(l, a, &retry), PS_E_RATE_LIMITED);
	ck_assert_int_eq(limits_auth_check(l, b, &retry), PS_E_RATE_LIMITED);
	ck_assert_int_eq(limits_auth_check(l, "a", &retry), 0);
	limits_free(l);
}
END_TEST

START_TEST(free_null)
{
	limits_free(NULL);
}
END_TEST

static Suite *limits_suite(void)
{
	Suite *s = suite_create("limits");
	TCase *b = tcase_create("buckets"), *a = tcase_create("auth");

	tcase_add_test(b, burst_then_limited);
	tcase_add_test(b, retry_after_is_time_to_next_token);
	tcase_add_test(b, defaults);
	tcase_add_test(b, refill_over_time);
	tcase_add_test(b, refill_capped_at_burst);
	tcase_add_test(b, buckets_independent);
	tcase_add_test(b, no_refill);
	tcase_add_test(b, bad_index);
	tcase_add_test(b, threads_share_a_bucket);
	tcase_add_test(b, free_null);
	tcase_add_test(a, auth_failures_then_limited);
	tcase_add_test(a, auth_table_eviction);
	tcase_add_test(a, auth_long_peer);
	suite_add_tcase(s, b);
	suite_add_tcase(s, a);
	return s;
}

int main(void)
{
	return check_run(limits_suite()) ? EXIT_FAILURE : EXIT_SUCCESS;
}
